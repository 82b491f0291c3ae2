"""Pure media code (no Ray): audio cleanup, Opus, Ogg, pacing, images and sentence splitting."""
