"""Generated corpora: every item renders one concept (a colour and a shape) in each modality.

``draw`` holds the drawing primitives and the corpus styles (``Scene``); each modality's
``ModalitySpec.synthetic`` renders a scene as a file or as a decoded input; ``corpus`` loops over the
registry to write a sample corpus or draw a sample's inputs; ``concept_store`` encodes a corpus into a
feature store for the quality experiments. Adding a modality with a ``synthetic`` entry adds it to all of
them without editing a program.
"""
