"""Training the project's own SPIRE model (`spire-rt train`): offline data and the staged recipe."""
