"""Screening people's requests before they become benign prompts.

`screen` sorts one prompt into one of three outcomes, with the reason:

- removed: a jailbreak (its wording, or 5-gram Jaccard >= 0.5 with a prompt of a jailbreak
  source), a harmful request (Jaccard >= 0.5 with a harmful source, or an explicit request for
  violence, weapons, drugs, self-harm or crime), sexual content, not English, too short;
- edgy: a benign-looking request on a sensitive subject (security, medicine and doses,
  violence in fiction, weapons, drugs, instructions-override boilerplate). These are the
  candidates for the reviewed hard negatives; the review decides;
- kept.

Patterns are deliberately broad on the removal side: losing a benign prompt costs little,
keeping a jailbreak in the benign corpus corrupts every detector trained on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jbtrace.prompts.dedup import NearDuplicateIndex

NEAR = 0.5  # Jaccard at which a request counts as a copy of a jailbreak or harmful prompt
MIN_WORDS = 3
ENGLISH = 0.95  # share of ASCII letters among letters


def _any(*patterns: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


JAILBREAK = _any(
    r"\bDAN\b",
    r"do anything now",
    r"jail ?br[eo]a?k",
    r"developer mode",
    r"filter improvement mode",
    r"\bunfiltered\b",
    r"\buncensored\b",
    r"(?:no|without(?: any)?) (?:ethical|moral) (?:guidelines|restrictions|limits|constraints)",
    r"stay in character",
    r"content polic(?:y|ies)",
    r"openai'?s? (?:policy|policies|rules|guidelines)",
    r"not bound by",
    r"tokens? (?:will be )?deducted",
    r"evil (?:confidant|ai|bot)",
    r"\bAIM\b.{0,40}machiavellian",
    r"(?:no|without(?: any)?) (?:restrictions|limitations|filters|censorship)",
    r"free from (?:all |any )?(?:restrictions|rules|limitations)",
    r"(?:break|bypass|ignore) (?:the|your|all|any) (?:rules|guidelines|safety|filters?)",
)
OVERRIDE = _any(  # instruction-override boilerplate of prompt collections: edgy, not removed
    r"ignore (?:all |any )?(?:the |your )?(?:previous|prior|above|earlier) "
    r"(?:instructions?|prompts?|messages?)",
    r"disregard (?:all |any )?(?:the |your )?(?:previous|prior|above) (?:instructions?|prompts?)",
)
HARMFUL = _any(
    r"(?:make|build|create|assemble|synthesi[sz]e|cook) (?:a |an |some )?"
    r"(?:bomb|explosive|pipe bomb|napalm|nerve agent|poison|meth|methamphetamine|cocaine|heroin)",
    r"(?:kill|murder|poison|hurt|stab|shoot) (?:myself|my (?:wife|husband|boss|neighbou?r)|"
    r"someone|somebody|a person|people)",
    r"(?:suicide|self[- ]harm) (?:method|note|plan)",
    r"how (?:do|can|to) (?:i |you )?(?:hack into|steal|launder|shoplift|stalk|blackmail|kidnap)",
    r"child (?:porn|sexual|abuse material)",
    r"credit card (?:numbers|fraud|skimm)",
    r"ransomware that|keylogger that|write (?:a |me )?(?:virus|malware|ransomware)",
)
SEXUAL = _any(
    r"\bnsfw\b", r"\bporn", r"\berotic", r"explicit (?:sex|scene|content)", r"\bsex scene"
)
EDGY = _any(
    r"\bhack",
    r"exploit",
    r"vulnerab",
    r"malware",
    r"phishing",
    r"penetration test",
    r"password",
    r"\bcve-",
    r"\bxss\b",
    r"sql injection",
    r"\bdos attack|\bddos",
    r"encrypt",
    r"firewall",
    r"\bdos(?:e|es|age)\b",
    r"\bmg\b",
    r"overdose",
    r"medication",
    r"prescri",
    r"symptom",
    r"\bdrugs?\b",
    r"opioid",
    r"cannabis|marijuana",
    r"alcohol",
    r"\bkill",
    r"murder",
    r"\bdeath",
    r"\bdead\b",
    r"violen",
    r"\bblood",
    r"\bwar\b",
    r"\bweapon",
    r"\bguns?\b",
    r"\bfirearm",
    r"\bbomb",
    r"nuclear",
    r"assassin",
    r"terror",
    r"torture",
    r"\bpoison",
    r"\bsuicid",
    r"\bsteal",
    r"\bcrime|criminal",
    r"\bfight",
)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # removed / edgy / kept
    reason: str


def english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) / len(letters) >= ENGLISH


class Screen:
    """The screen, with indexes of the jailbreak and harmful prompts to compare against."""

    def __init__(self, jailbreaks: dict[str, list[str]], harmful: dict[str, list[str]]):
        self.indexes = {}
        for kind, sources in (("jailbreak", jailbreaks), ("harmful", harmful)):
            index = NearDuplicateIndex(NEAR)
            for source, texts in sources.items():
                for i, text in enumerate(texts):
                    index.add((source, i), text)
            self.indexes[kind] = index

    def __call__(self, text: str) -> Verdict:
        if not english(text):
            return Verdict("removed", "not English")
        if len(text.split()) < MIN_WORDS:
            return Verdict("removed", f"fewer than {MIN_WORDS} words")
        for kind, index in self.indexes.items():
            if match := index.match(text):
                (source, i), score = match[0]
                return Verdict("removed", f"{kind}: near {source}#{i} (Jaccard {score:.2f})")
        for kind, pattern in (("jailbreak", JAILBREAK), ("harmful", HARMFUL), ("sexual", SEXUAL)):
            if found := pattern.search(text):
                return Verdict("removed", f"{kind} wording: {found.group(0)!r}")
        for kind, pattern in (("override", OVERRIDE), ("sensitive", EDGY)):
            if found := pattern.search(text):
                return Verdict("edgy", f"{kind} wording: {found.group(0)!r}")
        return Verdict("kept", "")
