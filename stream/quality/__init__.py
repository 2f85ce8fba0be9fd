"""Quality from labels: the prediction log, the feedback, and quality per window."""
