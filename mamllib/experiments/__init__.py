"""Experiments: a config in, trained parameters, evaluations and reproduction rows
out. One module per domain (sinusoid, fewshot, metarl); they share the training loop
(:mod:`mamllib.train`), the evaluation (:mod:`mamllib.evaluate`) and the writer
(:mod:`mamllib.report`)."""
