"""`spire-rt eval`: the restoration benchmark (PSNR/SSIM per degradation family) and the controllability sweep."""
