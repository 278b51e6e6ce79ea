"""What the classifier sees of a request: cue counts and structure, measured in one cheap pass.

Only a bounded window of the latest user message is read word by word: its first paragraph
and its last (where people put the instruction and the question), with fenced code and long
quotations set aside as material. The rest of the message counts only through its size and
shape, so a 100k-token prompt costs about what a 1k-token one does, plus a few C-speed scans.

`measure(req)` returns the named signal strengths that `tandem.routing.classifier` weighs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tandem.chat import ChatRequest, Message
from tandem.routing import cues
from tandem.routing.estimate import estimate_text

HEAD_CHARS = 400  # the instruction usually opens the message...
TAIL_CHARS = 200  # ...or closes it, after the material
WIDE_SHRINK = 2.5  # a Chinese character says about as much as 2.5 English ones
LEAD_CHARS = 100  # a cue this close to the start belongs to the opening instruction
GREETING_CHARS = 24  # a first paragraph shorter than this is a greeting, not the instruction
QUOTE_MIN = 60  # a quoted span this long is material to work on, not instruction
SHORT_TOKENS = 48  # a message this short is a quick question or a remark
MATERIAL_CHARS = 600  # a message this long carries material (a document, data, a log)
LONG_CHARS = 1500  # ...and this long, a lot of it

GROUPS = (
    "transform",
    "compose",
    "label",
    "lookup",
    "social",
    "shallow",
    "code",
    "symptom",
    "cause",
    "proof",
    "analyze",
    "compare",
    "plan",
    "quantity_q",
    "estimate",
    "relation",
    "constraint",
    "deduce",
    "puzzle",
    "number",
)
_SHALLOW_LEAD = ("transform", "label", "compose")  # opening verbs that fix the task


@dataclass(slots=True)
class Features:
    """Counts of distinct cues per group, plus the request's structure."""

    hits: dict[str, int] = field(default_factory=dict)  # group -> distinct cues seen
    lead: set[str] = field(default_factory=set)  # groups with a cue in the opening instruction
    quantities: int = 0  # numbers read (a chain like 3 + 4 + 5 or 6–14 is one); words: hits
    questions: int = 0  # question marks in the window
    closing_question: bool = False  # a question in the last part of the window
    chars: int = 0  # length of the latest user message
    size: int = 0  # its estimated tokens when short (a Chinese character carries more)
    code_blocks: int = 0  # fenced code blocks in it
    quoted: int = 0  # long quoted spans in the window
    meta: bool = False  # it asks the model to think hard, in prose
    tools: int = 0  # tools offered
    json_output: bool = False  # a JSON response format was requested
    lead_chars: int = LEAD_CHARS  # how far the opening instruction reaches (less in Chinese)

    def n(self, group: str) -> int:
        return self.hits.get(group, 0)

    def add(self, group: str, at: int, lead_chars: int) -> None:
        """Count a cue of `group` found at `at` (-1: position unknown)."""
        self.hits[group] = self.hits.get(group, 0) + 1
        if 0 <= at < lead_chars:
            self.lead.add(group)


def measure(req: ChatRequest) -> dict[str, float]:
    """The strength of each signal present in `req` (absent signals are left out)."""
    return strengths(extract(req))


def strengths(f: Features) -> dict[str, float]:
    """Turn cue counts into signal strengths: caps keep one wordy group from dominating."""
    s: dict[str, float] = {}
    for group, count in f.hits.items():
        if cap := _CAPS.get(group):
            s[group] = min(count, cap)
    if f.n("lookup") and f.size < SHORT_TOKENS:
        s["lookup"] = 1
    if not f.lead.isdisjoint(_SHALLOW_LEAD):
        s["shallow_lead"] = 1
    if f.code_blocks:
        s["code_block"] = 1
    quantities = f.quantities + f.n("number")
    if quantities > 2:
        s["quantities"] = min(quantities - 2, 6)
    if quantities >= 3 and f.n("quantity_q"):
        s["word_problem"] = 1
    if f.questions >= 2:
        s["questions"] = 1
    if f.chars > LONG_CHARS:
        s["long"] = 1
    if f.closing_question and f.chars > MATERIAL_CHARS:
        s["question_on_material"] = 1
    if f.tools:
        s["tools"] = 1
    if f.json_output:
        s["json_output"] = 1
    if f.meta:
        s["meta"] = 1
    return s


# How many distinct cues of a group count at most. (Lookup cues count only in a short message,
# number words only as quantities.)
_CAPS = {
    "transform": 2,
    "compose": 2,
    "label": 2,
    "social": 2,
    "shallow": 2,
    "code": 1,
    "symptom": 3,
    "cause": 2,
    "proof": 2,
    "analyze": 3,
    "compare": 2,
    "plan": 3,
    "quantity_q": 1,
    "estimate": 1,
    "relation": 1,
    "constraint": 5,
    "deduce": 1,
    "puzzle": 1,
}


def extract(req: ChatRequest) -> Features:
    """Cues and structure of `req`, judged on its latest user message."""
    f = Features(tools=len(req.tools))
    f.json_output = req.response_format is not None and req.response_format.type != "text"
    text = latest_user_text(req.messages)
    f.chars = len(text)
    # Only short messages need a size (the lookup signal); Chinese packs ~1 token a character.
    f.size = estimate_text(text) if f.chars <= SHORT_TOKENS * 6 else SHORT_TOKENS * 6
    if "```" in text:
        parts = text.split("```")
        f.code_blocks = len(parts) // 2
        text = "\n\n".join(parts[0::2])  # prose only; code counts through code_blocks
    head, tail, wide, dense = _window(text)
    if dense:
        f.lead_chars = int(LEAD_CHARS / WIDE_SHRINK)
    _match_cues(f, head, wide, dense, opening=True)
    # "Translate the report below": when the message opens with such a task, its end is the
    # report, not a question.
    if tail and f.lead.isdisjoint(_SHALLOW_LEAD):
        _match_cues(f, tail, wide, dense, opening=False)
    return f


def _match_cues(f: Features, part: str, wide: bool, dense: bool, *, opening: bool) -> None:
    """Count the cues, quantities and questions of one part of the window into `f`."""
    window, quoted = _strip_quotes(part.lower().replace("’", "'"))
    f.quoted += quoted
    words = _words(window, dense)
    if not words.isdisjoint(cues.META_TRIGGERS_EN) or (
        wide and any(t in window for t in cues.META_TRIGGERS_ZH)
    ):
        window, meta = _strip_meta(window)
        if meta:
            f.meta = True
            words = _words(window, dense)
    lead = f.lead_chars if opening else 0
    for w in words & _HEADS:
        for group, phrase, needs in _EN[w]:
            if not phrase:  # a one-word cue: where it is matters only for an opening verb
                f.add(group, _find_word(window, w) if lead and group in _SHALLOW_LEAD else -1, lead)
            elif needs <= words and (at := _find_word(window, phrase)) >= 0:
                f.add(group, at, lead)
    numbers = len(_NUMBER_RE.findall(window))
    if wide:
        seen: set[str] = set()
        for m in _ZH_RE.finditer(window):
            if (cue := m.group()) not in seen:
                seen.add(cue)
                for group in _ZH[cue]:
                    f.add(group, m.start(), lead)
        numbers += len(_ZH_NUMBER_RE.findall(window))
    if numbers and "\n" in window:
        numbers -= len(_ENUM_RE.findall(window))  # "1." and "2)" number list items
    f.quantities += numbers
    f.questions += window.count("?") + window.count("？")
    ending = window[-TAIL_CHARS:]
    f.closing_question = "?" in ending or "？" in ending  # the tail, when read, has the last word


def _find_word(window: str, word: str) -> int:
    """Where `word` first starts a word in `window` ("tag" in "advantage" does not), or -1."""
    at = window.find(word)
    while at > 0 and "a" <= window[at - 1] <= "z":  # the window is lowercase; 成json is a word
        at = window.find(word, at + 1)
    return at


def latest_user_text(messages: list[Message]) -> str:
    """The latest user message: the task (the last message when no user spoke)."""
    for m in reversed(messages):
        if m.role == "user":
            return m.content
    return messages[-1].content if messages else ""


def _window(text: str) -> tuple[str, str, bool, bool]:
    """The first and last paragraphs of a long text (bounded; the tail is empty for a short
    text), whether it holds Chinese, and whether it is mostly Chinese. A mostly Chinese window
    is narrower: it says as much in fewer characters, and its cue scan costs more per character."""
    head_chars, tail_chars = HEAD_CHARS, TAIL_CHARS
    sample = text[: head_chars + tail_chars]
    extra = 0 if sample.isascii() else len(sample.encode("utf-8")) - len(sample)
    # A Chinese character is 3 UTF-8 bytes: a few of them (not just a ° or a —) make it worth
    # scanning for Chinese cues; mostly Chinese narrows the window.
    wide = extra >= 6 and _CJK_RE.search(sample) is not None
    dense = wide and extra > len(sample) // 2
    if dense:
        head_chars, tail_chars = int(HEAD_CHARS / WIDE_SHRINK), int(TAIL_CHARS / WIDE_SHRINK)
    if len(text) <= head_chars + tail_chars:
        return text, "", wide, dense
    head_end = text.find("\n\n", GREETING_CHARS, head_chars)  # after a greeting, before material
    tail_start = text.rfind("\n\n", len(text) - tail_chars)
    head = text[: head_end if head_end > 0 else head_chars]
    return head, text[tail_start if tail_start > 0 else len(text) - tail_chars :], wide, dense


def _strip_quotes(window: str) -> tuple[str, int]:
    """Drop long quoted spans ("...", “...”, 「...」): text to work on, not the instruction."""
    if '"' not in window and "“" not in window and "「" not in window:
        return window, 0
    return _QUOTE_RE.subn(" ", window)


def _words(window: str, dense: bool) -> frozenset[str]:
    """The words of `window` that the lexicon knows (cues, words of phrases, meta triggers)."""
    if dense:  # Chinese has no spaces: pick out the English words inside it
        return _VOCABULARY.intersection(_ASCII_WORD_RE.findall(window))
    for p in _PUNCT:
        window = window.replace(p, " ")
    return _VOCABULARY.intersection(window.split())


def _strip_meta(window: str) -> tuple[str, bool]:
    found = False
    for phrase in _META:
        if phrase in window:
            window = window.replace(phrase, " ")
            found = True
    return window, found


_Cue = tuple[str, str, frozenset[str]]  # group, phrase ("" for a one-word cue), words it needs


def _lexicon() -> tuple[dict[str, tuple[_Cue, ...]], dict[str, tuple[str, ...]]]:
    """English: a cue's word (a phrase's first word) -> its cues; Chinese: cue -> groups."""
    english: dict[str, tuple[_Cue, ...]] = {}
    chinese: dict[str, tuple[str, ...]] = {}
    for group in GROUPS:
        words, *phrases = getattr(cues, f"{group.upper()}_EN").replace("\n", " ").split("|")
        for w in words.split():
            english[w] = (*english.get(w, ()), (group, "", frozenset((w,))))
        for phrase in map(" ".join, map(str.split, phrases)):
            needs = frozenset(w.strip(",;:") for w in phrase.split())
            head = phrase.split()[0].strip(",;:")
            english[head] = (*english.get(head, ()), (group, phrase, needs))
        for w in getattr(cues, f"{group.upper()}_ZH").split():
            chinese[w] = (*chinese.get(w, ()), group)
    return english, chinese


def _trie_pattern(words: list[str]) -> str:
    """One alternation with shared prefixes factored out: at each position the engine tries one
    branch per distinct first character, and an optional tail prefers the longer cue."""
    trie: dict[str, Any] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


_EN, _ZH = _lexicon()
_HEADS = frozenset(_EN)
# Every word the English cues mention (so a phrase's other words can be checked as a set).
_VOCABULARY = frozenset(w for cue_list in _EN.values() for _, _, needs in cue_list for w in needs)
_VOCABULARY |= cues.META_TRIGGERS_EN
_ZH_RE = re.compile(_trie_pattern(list(_ZH)))
_META = tuple(
    " ".join(phrase.split())
    for spec in (cues.META_EN, cues.META_ZH)
    for phrase in spec.replace("\n", " ").split("|")
    if phrase.strip()
)
_QUOTE_RE = re.compile(f'"[^"]{{{QUOTE_MIN},}}"|“[^”]{{{QUOTE_MIN},}}”|「[^」]{{{QUOTE_MIN},}}」')
_CJK_RE = re.compile("[\u3400-\u9fff]")
_ASCII_WORD_RE = re.compile(r"[a-z][a-z0-9+#'-]*")
# A number, or a chain of numbers joined by arithmetic or range signs (one quantity).
_NUMBER_RE = re.compile(r"[0-9][0-9.,:]*(?:\s?[-+*/×x÷–~]\s?[0-9][0-9.,:]*)*")
# Chinese numerals with a measure word ("两班", "三个箱子"); 一 is left out: it also means "a".
_ZH_NUMBER_RE = re.compile("[两二三四五六七八九十][个名条台辆次天班人项家种件箱周位]")
_ENUM_RE = re.compile(r"\n[ \t]*[(（]?[0-9]{1,2}[.)、）]")
# Punctuation that separates words (the apostrophe stays: "don't", "what's").
_PUNCT = ("?", ",", ".", ";", ":", "!", "(", ")", '"', "\n", "/")
