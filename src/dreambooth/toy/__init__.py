"""The toy world and the small Stable Diffusion model pretrained on it (shipped in ``toy/model``).

``world`` renders the world, ``oracle`` reads generated pictures back, ``architecture`` and
``pretrain`` build and train the base model, ``measure`` checks what the base knows, ``demo`` teaches
it a new subject with DreamBooth.
"""
