"""The closed loop: retrain from logged features and labels, validate, promote from shadow."""
