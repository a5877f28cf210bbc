"""Small helpers every wing shares: atomic file writes, progress bars, device moves and
autocast. One copy each, so a fix lands everywhere."""
