"""The Stable Diffusion family: fine-tuning (DreamBooth with prior preservation, LoRA, captions) and generation
(text-to-image, image-to-image, inpainting). It imports only the diffusion core and the layers below."""
