"""Using a trained model: the predictor, inference preparation and export."""
