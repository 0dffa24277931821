"""A1111's option keys (``/sdapi/v1/options``, a request's ``override_settings``) that this server
takes beside its own, with A1111's defaults (1.9/1.10, ``modules/shared_options.py``).

An A1111 client sends whole option sets it read from an A1111 (or its own saved ones): a key only
A1111's UI, file saving or housekeeping reads is stored and echoed at any value; a key that would
change the pictures (or what a reply or PNG holds) is taken at its default, where this server does
what A1111 does, and refused at any other value, never stored and ignored."""
from __future__ import annotations

# Changes nothing this server makes: stored as sent, echoed by GET /sdapi/v1/options.
HOUSEKEEPING_OPTIONS = {
    # saving (this server's save_images writes PNGs in A1111's folder layout, named its own way)
    "samples_save": True, "samples_filename_pattern": "", "save_images_add_number": True, "grid_save": True,
    "grid_extended_filename": False, "grid_only_if_multiple": True, "grid_prevent_empty_spots": False,
    "save_txt": False, "save_images_before_face_restoration": False, "save_images_before_highres_fix": False,
    "save_images_before_color_correction": False, "save_mask": False, "save_mask_composite": False,
    "jpeg_quality": 80, "webp_lossless": False, "export_for_4chan": True, "img_downscale_threshold": 4.0,
    "target_side_length": 4000, "use_original_name_batch": True, "use_upscaler_name_as_suffix": False,
    "save_selected_only": True, "save_init_img": False, "save_incomplete_images": False, "save_to_dirs": True,
    "grid_save_to_dirs": True, "use_save_to_dirs_for_ui": False, "directories_filename_pattern": "[date]",
    "directories_max_prompt_words": 8,
    # the process, memory and caches
    "show_warnings": False, "samples_log_stdout": False, "multiple_tqdm": True, "memmon_poll_rate": 8,
    "sd_checkpoints_limit": 1, "sd_checkpoint_cache": 0, "sd_checkpoints_keep_in_cpu": True, "sd_vae_checkpoint_cache": 0,
    "persistent_cond_cache": True, "batch_cond_uncond": True, "upscaling_max_images_in_cache": 5,
    # the WebUI's own pages
    "send_seed": True, "send_size": True, "js_modal_lightbox": True, "js_modal_lightbox_initially_zoomed": True,
    "show_progress_in_title": True, "samplers_in_dropdown": True, "dimensions_and_batch_together": True,
    "quicksettings_list": ["sd_model_checkpoint"], "hide_samplers": [], "show_progressbar": True,
    "live_previews_image_format": "png", "live_preview_refresh_period": 1000, "disable_token_counters": False,
    "hires_fix_show_sampler": False, "hires_fix_show_prompts": False, "localization": "None",
    "gradio_theme": "Default", "disable_weights_auto_swap": True,
}

# Would change the pictures, or what a reply or its PNG holds: this server does what A1111 does at
# these values, and nothing else (a 400 naming the key otherwise). "Clip skip" is honoured (GENERATION_OPTIONS).
FIXED_OPTIONS = {
    "samples_format": "png", "grid_format": "png", "enable_pnginfo": True, "return_grid": True,
    "do_not_show_images": False, "eta_noise_seed_delta": 0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0,
    "s_noise": 1.0, "s_min_uncond": 0.0, "k_sched_type": "Automatic", "sigma_min": 0.0, "sigma_max": 0.0,
    "rho": 0.0, "always_discard_next_to_last_sigma": False, "enable_quantization": False, "tiling": False,
    "face_restoration": False, "initial_noise_multiplier": 1.0, "img2img_extra_noise": 0.0,
    "img2img_color_correction": False, "token_merging_ratio": 0.0, "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0, "pad_cond_uncond": False, "sd_unet": "Automatic", "sd_hypernetwork": "None",
    "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full", "sdxl_crop_top": 0, "sdxl_crop_left": 0,
    "use_old_emphasis_implementation": False, "use_old_karras_scheduler_sigmas": False,
    "use_old_hires_fix_width_height": False,
}
