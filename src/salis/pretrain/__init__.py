"""Self-supervised pretraining of the backbone on the unlabeled pool (stage `pretrain`)."""
