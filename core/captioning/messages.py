"""What the app and the captioning service say to each other: the job, the query and each message a job
sends back. Frozen, picklable, no torch: the app imports this module, and tells messages apart by type."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..generation.prompts import MAX_TOKENS

# Images are read at most this large (long side): every captioning model sees far less (LLaVA 336-672 px,
# Florence-2 768, Qwen-VL's default budget about 3.5 MP), and a batch of 13,000 px PNGs took 10.7 GB.
MAX_SIDE = 3072


@dataclass(frozen=True)
class CaptionFolder:
    """A job: CaptionSettings' fields."""
    settings: dict


@dataclass(frozen=True)
class CountCaptionTokens:
    """A query: a caption's length in the Lumina model's tokens (answered with prompts.TokenCount)."""
    text: str


@dataclass(frozen=True)
class ImageOutcome:
    """One image done: captioned (its captions now), or failed (why). Sent as each image finishes."""
    image: str  # path relative to the folder
    captions: list[str] = field(default_factory=list)  # the .txt's lines afterwards
    written: list[dict] = field(default_factory=list)  # the new lines with their style and token count
    error: str = ""
    downscaled: bool = False  # larger than MAX_SIDE: the captioner saw it scaled down
    repeated: bool = False  # a caption looped ("square square …"): cut, and the image marked "needs fixing"


@dataclass(frozen=True)
class Summary:
    """The job's end: what it did, sent last."""
    captioned: int = 0
    skipped: int = 0  # already captioned (skip mode) or done by the run resumed
    failed: list[str] = field(default_factory=list)  # "image: why"
    over_limit: int = 0  # captions longer than the Lumina model reads
    seconds: float = 0.0
    stopped: bool = False
    warnings: list[str] = field(default_factory=list)
    downscaled: int = 0  # images larger than MAX_SIDE, scaled down before the captioner saw them
    repeated: int = 0  # images whose caption looped: cut and marked "needs fixing"

    def describe(self) -> str:
        rate = f", {self.captioned / self.seconds:.1f} images/s" if self.seconds > 0 and self.captioned else ""
        text = f"{self.captioned} captioned, {self.skipped} skipped, {len(self.failed)} failed{rate}"
        if self.over_limit:
            text += f"; {self.over_limit} captions are longer than the model's {MAX_TOKENS}-token limit"
        if self.repeated:
            text += (f"; {self.repeated} captions repeated themselves: cut after the first copy, their images "
                     "marked 'needs fixing' for review")
        if self.downscaled:
            text += f"; {self.downscaled} images larger than {MAX_SIDE} px were scaled down to {MAX_SIDE} px for it"
        return "\n".join([text, *self.warnings])
