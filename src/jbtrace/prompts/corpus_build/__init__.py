"""Building the shipped benign corpus (`tools/build_benign_corpus.py`; the rebuild test).

Kept apart from the runtime: `load_prompts`, `jbtrace.prompts.corpus` and the rest of jbtrace
never import this subpackage. It reads the grammars in `data/compose/` (`compose`) and
installed packages' docstrings (`passages`), de-duplicates against the jailbreak sources that
`load_prompts` reads, and writes `data/benign-synthetic/` (`benign.build`); `people.build`
screens people's requests into `data/benign/manifest.json`. (Not named `build/`: the
repository ignores build folders.)
"""
