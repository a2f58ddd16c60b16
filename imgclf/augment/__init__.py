"""Training augmentation on the device, drawn per image for a whole batch, as torchvision defines each transform.

`config` holds train.augment's params (AugmentConfig); `input` composes the recipe (TrainInput): random
resized crop (`crop`), an augmentation
policy (`policy`) on pixel values, then normalisation, random rotation / shift / zoom / flip (`affine`)
and random erasing (`erasing`), in torchvision's reference order. MixUp/CutMix (`mixing`) need the
targets: the epoch loop applies them. `device` holds what they share. This file imports none of them.
"""
