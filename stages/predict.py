"""Stage `predict`: classify every image under a folder; write path, prediction, confidence, probabilities.

The flags and main() live in imgclf.predict, so that the installed `imgclf-predict` command (which
needs no torch with a model.onnx) and this stage are one program.
"""

from imgclf.predict import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
