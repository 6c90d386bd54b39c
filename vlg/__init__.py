"""vlg: vision-and-language pretraining for fine-grained understanding."""
