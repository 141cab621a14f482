"""Progressive multi-stage fine-tuning, launched as its own processes through `accelerate launch`.

cli (`lumina-studio train`) -> config, datasets, features (prepared once) -> launch -> loop (per process).
"""
