"""Optional bridges to other libraries. Nothing here is imported by ``shufflenet_det`` itself."""
