"""Experiments built on the trainer: baseline-vs-MIM comparisons (:mod:`.compare`), config
sweeps (:mod:`.sweep`), the paper's named ablation studies (:mod:`.studies`), the one-command
demo (:mod:`.demo`) and the step-throughput benchmark (:mod:`.bench`).

Importing this package imports none of them (and so not torch); import the module you need.
"""
