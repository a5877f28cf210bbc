"""The predict wing: a loaded model answering on raw images, videos and texts
(:class:`~x2core.predict.predictor.Predictor`, ``x2vlm predict``)."""
