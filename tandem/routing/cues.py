"""The words and phrases the classifier looks for, in English and Chinese, grouped by what they
say about a request. `tandem.routing.classifier` weighs the groups; this module only lists them.

Each group is a kind of task or a shape of question, not a topic: "translate" marks a transform
whatever the text is about, "why" marks a question about causes. English entries are matched as
whole words (multi-word entries as phrases), Chinese entries as substrings.
"""

from __future__ import annotations

# Transform given text without reasoning about it: translate, summarize, rewrite, extract, format.
TRANSFORM_EN = """
translate translated translating translation transcribe summarize summarise summarized summary
tl tldr rewrite reword rephrase paraphrase reformat proofread polish shorten condense extract convert
|turn this into|turn these into|turn it into|into json
|as json|as a json|json array|json list|json with|markdown table|cut this down|boil this down
|boil it down|make this sound|make it sound|how would i say
|add comments|add docstrings|type hints
"""
TRANSFORM_ZH = """
翻译 翻成 译成 总结 概括 摘要 提取 抽取 解析成 整理成 格式化 改写 改得 润色 转成 转换成 精简 缩写成
"""

# Compose short copy: replies, descriptions, titles, slogans, posts.
COMPOSE_EN = """
reply replies response email letter description title slogan tagline caption bullets bullet
post announcement paragraph joke greeting apology invitation listing blurb newsletter
|let the customer know|say hi
"""
COMPOSE_ZH = "文案 回复 答复 介绍 简介 卖点 标题 口号 提示语 口播 朋友圈 通知 道歉 广告语 祝福 说一句"

# Put a label on something: classify, tag, sentiment, severity, which team.
LABEL_EN = """
classify categorize categorise label tag tags sentiment positive negative neutral spam severity
|mark each|which team|which language|which category|what category
"""
LABEL_ZH = "分类 归类 属于哪 标成 标记 情感 正面 负面 中性 紧急程度 最紧急 哪一类"

# Look up a fact or a definition.
LOOKUP_EN = """
define definition
|what does|stand for|stands for|which company|who makes|who wrote|unit of|meaning of
"""
LOOKUP_ZH = "是什么 全称 什么意思 代表什么 是多少 等于多少 哪家"

# Small talk: greetings, thanks, goodbyes.
SOCIAL_EN = """
thanks thank thx cheers perfect awesome hello hi hey morning weekend |have a great|good morning
"""
SOCIAL_ZH = "谢谢 感谢 辛苦 哈喽 你好 早上好 周末 哈哈 明白了"

# The caller limits the task: "just", "no need to", "don't solve it", "nothing else".
SHALLOW_EN = """
just |no need|don't need|do not need|don't solve|don't analyze|don't analyse|don't summarize
|do not change|don't change|no commentary|nothing else|reply only|that's all|all i need
|all i actually need|not what i need|leave it
"""
SHALLOW_ZH = "就行 就好 即可 只要 只回 不用 不需要 别改 不要改"

# Code to write: code nouns and languages.
CODE_EN = """
function functions script program query generator pipeline wrapper parser algorithm implement
implementation regex sql python rust typescript javascript golang java pandas numpy postgresql
"""
CODE_ZH = "函数 脚本 程序 代码 查询 算法 实现"

# Something misbehaves: failures, faults, wrong results, intermittent symptoms.
SYMPTOM_EN = """
fail fails failed failure faults fault trip tripped trips alarm error errors exception traceback
wrong bug bugs mistake broken crash crashes leak leaks leaking jumps spikes climbs drops dropped
intermittent sometimes again problem problems issue issues always never instead overheating
|every so often|looks off|look off|doesn't work|stopped working
"""
SYMPTOM_ZH = "报警 故障 泄漏 漏油 偶尔 总是 一直 下降 异常 不良 超差 失效 报错 出错 写错 不一样"

# A question about causes.
CAUSE_EN = """
why cause causes caused causing
|root cause|most likely|going on|what's happening|what is happening|what changed|how come|went wrong
|what's wrong
"""
CAUSE_ZH = "为什么 原因 根因 怎么回事 为何 出在哪"

# Prove or derive something in general.
PROOF_EN = """
prove proof derive theorem induction irrational
|show that|show, using|for every|no matter|convince me
"""
PROOF_ZH = "证明 反证 一定成立 一定存在 任意 无理数"

# Analyse given material: assess, check against, walk through, point to.
ANALYZE_EN = """
analyze analyse analysis assess evaluate verify audit critique diagnose troubleshoot consider
deviation deviations breach breaches contradict contradicts inconsistent implications risk risks
recommend recommendation justify interpret
|check whether|check if|walk me through|work through|point to|what evidence|which clause|which clauses
"""
ANALYZE_ZH = "分析 评估 判断 核对 逐条 依据 说明理由 风险 推荐 对不上 理一理 主张 索赔 验证"

# Compare options and decide.
COMPARE_EN = """
compare comparison versus vs cheaper better worse trade-off trade-offs tradeoff tradeoffs worth
|which one|which is|which option|more often|less often|pros and cons|should we|should i|break-even
|present value
"""
COMPARE_ZH = "对比 比较 哪个 哪家更 划算 更便宜 值得 会变吗 方案一 方案二"

# Plan, schedule or optimize under constraints.
PLAN_EN = """
plan schedule scheduling rota roster timetable sequence allocate assign optimize optimise
design minimize minimise maximize maximise maximum minimum shortest fastest earliest cheapest
optimal feasible fit
|critical path|lay out
"""
PLAN_ZH = """
设计 安排 排产 排班 排一下 排一个 值班表 时间表 计划 规划 调拨 路线 最短 最低 最少 最大 最优 最早
最晚 可行 怎么排 怎么改
"""

# Ask for a quantity: how many, how much, what time.
QUANTITY_Q_EN = """
|how many|how much|how long|how far|how fast|how soon|what time|which day|what day|when will
|expected number|expected value
"""
QUANTITY_Q_ZH = "多少 多久 第几天 几月几号 一共"

# Estimate, or reason about chance: a model of the situation, not a recall.
ESTIMATE_EN = """
estimate estimating roughly approximately ballpark savings payback probability chance odds expected
"""
ESTIMATE_ZH = "估算 估计 大概 大约 回本 概率 可能性 期望"

# Quantities defined relative to each other have to be solved for.
RELATION_EN = """
twice |more than|less than|fewer than|times as|as many as|as much as|faster than|slower than
"""
RELATION_ZH = "倍 多出 少了 比例"

# Constraints on an answer: at most, must, only, unless, each.
CONSTRAINT_EN = """
must only exactly neither nor unless without each every if before after until within
|at most|at least|no more than|can't|cannot|not allowed
"""
CONSTRAINT_ZH = "最多 至少 不超过 不能 必须 只能 只有 只允许 每 如果 而且 同时 不得 之前 以内 不低于"

# Number words count as quantities ("three suppliers", "twelve bearings").
NUMBER_EN = """
two three four five six seven eight nine ten eleven twelve twenty hundred thousand half quarter twice
"""
NUMBER_ZH = "一半"

# Work out which, or how: a determination or a method, not a fact.
DEDUCE_EN = """
determine deduce
|figure out|work out|tell whether|tell which|find out which|find all|how do i|how can i|how should i
|how would you|is it possible|is there a way|who is right|who's right
"""
DEDUCE_ZH = "确定 推断 判断出 找出 如何确定 是否可能 有没有可能 谁对"

# A puzzle: clues, liars and truth-tellers, riddles.
PUZZLE_EN = "puzzle riddle clue clues liar liars lies truth |tells the truth|only possible"
PUZZLE_ZH = "谜题 线索 真话 假话 撒谎 说谎 谎话"

# Asking the model to think hard is about manner, not the task; these phrases are removed
# before cues are matched, so their words ("reason", "analyse", "derive") do not count.
META_EN = """
step by step|step-by-step|one step at a time|think carefully|think hard|think it through
|reason it through|reason it all the way through|reason it out|work through the logic
|thinking cap|deep-dive this|deep dive|rigorously|thoroughly|carefully
"""
META_ZH = """
一步一步推导|一步步严谨推理|一步步|一步一步|严谨论证|严谨推理|深度思考|认真推理|深入推理分析|深入推理
|逻辑分析能力|仔细思考|认真思考
"""
# Cheap pre-check: only when one of these is present is the removal pass run.
META_TRIGGERS_EN = frozenset(
    {
        "step",
        "step-by-step",
        "think",
        "thinking",
        "reason",
        "logic",
        "deep",
        "deep-dive",
        "rigorously",
        "thoroughly",
        "carefully",
    }
)
META_TRIGGERS_ZH = ("一步", "推理", "推导", "论证", "思考", "逻辑")
