"""The toy world and the small Stable Diffusion model pretrained on it (shipped in
``dreambooth/data/toy_model``, which ``--model toy`` names).

``world`` renders the world, ``oracle`` reads generated pictures back, ``architecture`` and
``pretrain`` build and train the base model, ``measure`` checks what the base knows, ``backdrops`` is
the toy preset's data transform, ``demo`` teaches the model a new subject with DreamBooth. This
package uses the library; nothing in the library uses it.
"""
