//! PyTorch zip+pickle reader (placeholder, see helper).
