"""The lab models: builders, training recipes, checkpoints, measurements and model cards.

Built on the lab world (:mod:`eadp_lab.world`, a pure generator that imports nothing of
this package): :mod:`.build` (the tiny ``CLIPModel`` and ``LlavaForConditionalGeneration``
and their processors), :mod:`.tokenizer`, :mod:`.losses`, :mod:`.clip_training`,
:mod:`.llava_training`, :mod:`.referents` (the LLaVA's intermediate
training targets: what a question names), :mod:`.checkpoint`, :mod:`.measure` (dense alignment of a CLIP),
:mod:`.probe` (linear probes of the visual tokens), :mod:`.cards` and :mod:`.train`, the
command that retrains and measures them: ``python -m eadp_lab.labmodels.train clip|clip-global|llava``.
"""
