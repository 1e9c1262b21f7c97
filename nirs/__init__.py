"""The spectroscopy domain: data, operators, pipeline configs, cross-validated fitting. Never imports Prefect or storage.

Modules: `dataset` (SpectraDataset), `readers` and `jcampdx` (spectra files), `datasets`
(Tablet and coffee), `operators` (spectral transformers; their paths are pickled, never move
them), `splitters` (Kennard-Stone, SPXY), `config` and `generators` (pipeline configs),
`metrics`, `training` (fitting into an execution trace), `trace` (the contract with
storage), `replay` (the replay rule), `errors`.
"""
