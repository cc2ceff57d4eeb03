"""The study's pipeline above the models: profiles and their configurations (`config`), per-machine
precision (`precision`), run identity and the training recipes (`recipes`), the lookups of trained models
(`trained`, which registers each dataset's trained classifier as a feature map of `gen_lib.features` when
imported), the cache of trained models and results (`cache`), and the memory plan (`memory`)."""
