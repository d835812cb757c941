"""`powmon web`: a live page, an event stream and Prometheus metrics, as one more subscriber."""
