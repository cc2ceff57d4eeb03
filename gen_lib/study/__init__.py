"""The study's pipeline above the models: profiles and their configurations (`config`), per-machine
precision (`precision`), run identity and the training recipes (`recipes`), the cache of trained models
and results (`cache`), and the memory plan (`memory`)."""
