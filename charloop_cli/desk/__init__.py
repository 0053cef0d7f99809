"""The review desk: ``charloop review serve``, a small web app for the human discriminator."""
