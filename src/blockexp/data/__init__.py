"""Training data: sources -> tokenise -> pack -> DataModule, for CPT and SFT on one base.

May import :mod:`blockexp.errors`, :mod:`blockexp.expanders`, :mod:`blockexp.io` and
:mod:`blockexp.layers`. Configs name a DataModule by its module
(``blockexp.data.cpt.CPTDataModule``), so importing a light helper (``blockexp.data.collate``)
does not import Lightning.
"""
