"""The study's pipeline above the models: profiles and their configurations (`config`), per-machine
precision (`precision`), run identity and the training recipes (`recipes`), the lookups of trained models
(`trained`), the cache of trained models and results (`cache`), and the memory plan (`memory`).

Importing the study imports `trained`, which registers each dataset's trained classifier as a feature map of
`gen_lib.features` ("mnist", "fashion"): every caller of the pipeline has them."""

from . import trained  # noqa: F401  (registers the datasets' classifiers as feature maps)
