"""The classic hand-written training script, end to end, as one process: what benchmarks.first_run compares with.

ImageFolder + PIL transforms, a random 70/15/15 split, inverse-frequency class weights for a
WeightedRandomSampler, `epochs` epochs of Adam with a validation F1 (scikit-learn) after each, the
best epoch's weights saved. Self-contained (torch, torchvision, scikit-learn): its start-up is a user's.

    python -m benchmarks.classic_first_run IMAGE_FOLDER MODEL.pt --epochs 2 --image-size 64 --batch-size 32
"""

import argparse
import copy

import torch
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, Subset, WeightedRandomSampler
from torchvision import datasets, models
from torchvision import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("model")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(42)
    size = args.image_size
    train_tf = T.Compose([T.Resize(size), T.CenterCrop(size),
                          T.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=255),
                          T.ToTensor(), T.Normalize(MEAN, STD)])
    eval_tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)])
    train_set, eval_set = datasets.ImageFolder(args.root, train_tf), datasets.ImageFolder(args.root, eval_tf)
    order = torch.randperm(len(train_set)).tolist()
    n_train, n_val = int(0.7 * len(order)), int(0.15 * len(order))
    train_idx, val_idx = order[:n_train], order[n_train:n_train + n_val]
    targets = [train_set.targets[i] for i in train_idx]
    counts = torch.bincount(torch.tensor(targets))
    weights = [len(targets) / counts[t].item() for t in targets]
    train_loader = DataLoader(Subset(train_set, train_idx), batch_size=args.batch_size,
                              sampler=WeightedRandomSampler(weights, len(weights), replacement=True))
    val_loader = DataLoader(Subset(eval_set, val_idx), batch_size=args.batch_size)
    model = models.resnet18(num_classes=len(train_set.classes))
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    best, best_state = -1.0, None
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        model.eval()
        predicted, actual = [], []
        with torch.no_grad():
            for images, labels in val_loader:
                predicted += model(images).argmax(1).tolist()
                actual += labels.tolist()
        f1 = f1_score(actual, predicted, average="weighted")
        print(f"epoch {epoch + 1}: val_f1 {f1:.4f}", flush=True)
        if f1 > best:
            best, best_state = f1, copy.deepcopy(model.state_dict())
    torch.save(best_state, args.model)


if __name__ == "__main__":
    main()
