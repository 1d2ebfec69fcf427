r"""Images/s of the two-view training pipeline: ours (tf.data) vs official SimSiam (torchvision).

  tar -xzf ../shared/data/cifar10_train_jpeg.tar.gz -C /tmp/cifar10
  python benchmarks/input_pipeline_bench.py --folder=/tmp/cifar10/train --image_size=32 \
      --torch_python=/tmp/torchvenv/bin/python

Ours: create_pretrain_dataset (host crop+flip; photometric on the device, the
default, and on the host). Official: torchvision ImageFolder + the SimSiam
TwoCropsTransform (RandomResizedCrop, RandomApply(ColorJitter) p=0.8,
RandomGrayscale 0.2, [GaussianBlur p=0.5 for ImageNet], flip, ToTensor,
Normalize), DataLoader with one worker per core. Same files, same cores; the
torch half runs in a separate interpreter (torch is not a project dependency)
and is skipped with a message when it is missing. Not a test.
"""
import argparse
import json
import os
import subprocess
import sys
import time

TORCH_SCRIPT = r'''
import json, os, sys, time, random
import torch, torchvision.transforms as T, torchvision.datasets as D
from PIL import ImageFilter
folder, size, n, blur, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
class GaussianBlur:  # moco.loader.GaussianBlur, as in the official SimSiam code.
    def __init__(self, sigma=(0.1, 2.0)): self.sigma = sigma
    def __call__(self, x): return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))
class TwoCrops:
    def __init__(self, t): self.t = t
    def __call__(self, x): return [self.t(x), self.t(x)]
aug = [T.RandomResizedCrop(size, scale=(0.2, 1.)),
       T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
if blur > 0: aug.append(T.RandomApply([GaussianBlur([.1, 2.])], p=blur))
aug += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
ds = D.ImageFolder(folder, TwoCrops(T.Compose(aug)))
loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=True)
it = iter(loader); next(it)
t = time.time(); seen = 0
while seen < n:
    try: b = next(it)
    except StopIteration: it = iter(loader); continue
    seen += b[0][0].shape[0]
print(json.dumps({"images_per_s": seen / (time.time() - t)}))
'''


def bench_ours(folder, size, n, host, blur):
  """Examples/s (each two views) of our pipeline on the folder."""
  from mixsiam_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  ds = input_pipeline.create_pretrain_dataset(
      f"folder:{folder}", "train", global_batch_size=256, image_size=size, seed=0,
      photometric_on_host=host, blur_prob=blur, process_index=0, process_count=1)
  it = ds.as_numpy_iterator()
  for _ in range(3):
    next(it)
  start, seen = time.time(), 0
  while seen < n:
    seen += next(it)["views"].shape[0]
  return seen / (time.time() - start)


def bench_torch(python, folder, size, n, blur):
  if not python or not os.path.exists(python):
    return None, f"torch half skipped: no interpreter at {python!r} (see the module docstring)"
  cmd = [python, "-c", TORCH_SCRIPT, folder, str(size), str(n), str(blur), str(os.cpu_count())]
  res = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if res.returncode:
    return None, f"torch half failed: {res.stderr.strip().splitlines()[-1:]}"
  return json.loads(res.stdout.strip().splitlines()[-1])["images_per_s"], ""


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--folder", required=True)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--num", type=int, default=10000)
  parser.add_argument("--blur_prob", type=float, default=0.0)
  parser.add_argument("--torch_python", default="/tmp/torchvenv/bin/python")
  args = parser.parse_args()
  cores = os.cpu_count()
  torch_ips, msg = bench_torch(args.torch_python, args.folder, args.image_size, args.num,
                               args.blur_prob)
  print(f"{cores} cores, {args.folder}, image_size {args.image_size}, blur_prob {args.blur_prob}"
        " (examples/s; each example = two views)")
  print(f"  torchvision (official SimSiam, {cores} workers): "
        + (f"{torch_ips:9.0f}" if torch_ips else msg))
  for host in (False, True):
    ours = bench_ours(args.folder, args.image_size, args.num, host, args.blur_prob)
    what = "crop+flip on host, photometric on device" if not host else "all on host"
    ratio = f"  ratio {ours / torch_ips:5.2f}x" if torch_ips else ""
    print(f"  ours ({what}): {ours:9.0f}{ratio}")


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
