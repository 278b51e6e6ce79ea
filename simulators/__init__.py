"""Protocol-faithful simulators of the engines Tandem drives: Ollama (edge) and vLLM (cloud).

Real HTTP servers on loopback with the engines' exact wire formats (streaming, thinking,
usage, errors), configurable speed and injected faults. Tests, `tandem up` and the benchmarks
use them in place of engines that cannot run on these machines.

    async with VllmSimulator(VllmSimConfig(models=["Qwen/Qwen3-14B"])) as sim:
        client = AsyncOpenAI(base_url=sim.url + "/v1", api_key="x")

See docs/simulators.md.
"""

from simulators.faults import Faults
from simulators.ollama import OllamaModel, OllamaSimConfig, OllamaSimulator
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator

__all__ = [
    "Faults",
    "OllamaModel",
    "OllamaSimConfig",
    "OllamaSimulator",
    "VllmModel",
    "VllmSimConfig",
    "VllmSimulator",
]
