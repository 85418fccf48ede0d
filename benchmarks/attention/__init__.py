"""The repulsive-attention study: real sentence data, three models, the methods and the open questions.

``python benchmarks/run_attention_study.py`` runs it (with resume from the records of finished runs)
and writes ``benchmarks/results/attention.json`` and ``docs/attention_study.md``; see that report for
the protocol. Modules: :mod:`.data` (data sets, splits, vocabularies), :mod:`.models` (the MiniLM
classifier, a small transformer trained from scratch, Lin et al.'s self-attentive encoder),
:mod:`.head_gates` (per-head gates: DropHead, pruning masks, head outputs for the disagreement
regulariser), :mod:`.methods` (what each method changes in a training step), :mod:`.metrics`,
:mod:`.train` (one run -> one record), :mod:`.plan` (which runs the study makes), :mod:`.records`
(the JSON-lines store) and :mod:`.report`.
"""
