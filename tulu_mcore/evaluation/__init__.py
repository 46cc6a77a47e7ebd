"""Benchmark evaluation of exported models: the Tülu 3 development and unseen suites through lm-eval.

``tasks/`` holds our lm-eval task files (``*_tulu.yaml``, the OLMES ``::tulu`` settings) and the
functions they name; :mod:`.benchmarks` reads each benchmark's rows (a local folder or the local HF
cache) in one schema per benchmark; :mod:`.scoring` holds the answer extraction and metrics (pure
functions of text); :mod:`.presets` the suites and the model-card numbers; :mod:`.harness` runs lm-eval
with one of three backends; :mod:`.report` writes results.json / results.md / results.png and compares
runs. The command line is ``tulu-eval`` (:mod:`tulu_mcore.cli.eval`).
"""
