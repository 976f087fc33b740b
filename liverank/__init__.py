"""liverank."""
