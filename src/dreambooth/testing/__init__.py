"""Test fixtures that ship with the package: tiny random pipelines of the real architectures
(``tiny``), the small CLIP vocabulary they use (``vocab``), tiny DINO and CLIP evaluation models
(``eval_models``). Tests and benchmarks build with them because no weights can be downloaded.
This package sits on top of the library, beside ``toy`` and ``cli``: nothing in the library imports it.
"""
