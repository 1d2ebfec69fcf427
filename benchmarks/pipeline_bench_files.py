"""The comparison files and the torchvision row of benchmarks/input_pipeline_bench.py.

ImageNet-like JPEGs written from scikit-image's sample photographs, and the official
SimSiam torchvision pipeline timed in another interpreter. Not a test.
"""
import json
import multiprocessing
import os
import subprocess

import numpy as np
from PIL import Image

TORCH_SCRIPT = r'''
import json, os, sys, time, random
import torch, torchvision.transforms as T, torchvision.datasets as D
from PIL import ImageFilter
folder, size, n, blur, workers, batch = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                         float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
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
loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=True)
it = iter(loader); next(it)
t = time.time(); seen = 0
while seen < n:
    try: b = next(it)
    except StopIteration: it = iter(loader); continue
    seen += b[0][0].shape[0]
print(json.dumps({"images_per_s": seen / (time.time() - t)}))
'''

# Colour photographs among scikit-image's bundled sample files (skimage/data).
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                 "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                 "retina.jpg", "ihc.png")


def find_sample_dir(pythons):
  """scikit-image's data folder, from the first interpreter that has scikit-image."""
  for python in pythons:
    if not python or not os.path.exists(python):
      continue
    res = subprocess.run(
        [python, "-c", "import os, skimage; print(os.path.join(os.path.dirname("
         "skimage.__file__), 'data'))"], capture_output=True, text=True, check=False)
    if res.returncode == 0:
      return res.stdout.strip().splitlines()[-1]
  return None


def _write_one(args):
  """Writes one JPEG: a random crop (60-100% area), flip and rescale of a sample photo."""
  k, source, path, seed = args
  rng = np.random.default_rng([seed, k])
  with Image.open(source) as im:
    im = im.convert("RGB")
    w, h = im.size
    area = rng.uniform(0.6, 1.0) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))) * w / h
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
      im = im.transpose(Image.FLIP_LEFT_RIGHT)
    scale = rng.uniform(400, 500) / max(cw, ch)
    im = im.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC)
    im.save(path, "JPEG", quality=90)
  return os.path.getsize(path)


def write_imagenet_like(sample_dir, out_dir, num_files, num_classes, seed=0):
  """Writes num_files JPEGs (longer side 400-500 px) into out_dir/class_XX/."""
  sources = [os.path.join(sample_dir, f) for f in SAMPLE_PHOTOS
             if os.path.exists(os.path.join(sample_dir, f))]
  if not sources:
    raise SystemExit(f"none of {SAMPLE_PHOTOS} found in {sample_dir}")
  for c in range(num_classes):
    os.makedirs(os.path.join(out_dir, f"class_{c:02d}"), exist_ok=True)
  jobs = [(k, sources[k % len(sources)],
           os.path.join(out_dir, f"class_{k % num_classes:02d}", f"{k:05d}.jpg"), seed)
          for k in range(num_files)]
  with multiprocessing.Pool(os.cpu_count()) as pool:
    sizes = pool.map(_write_one, jobs, chunksize=32)
  return len(sources), sum(sizes)


def bench_torch(python, folder, size, n, blur, batch_size):
  if not python or not os.path.exists(python):
    return None, f"skipped: no interpreter at {python!r} (see the module docstring)"
  cmd = [python, "-c", TORCH_SCRIPT, folder, str(size), str(n), str(blur), str(os.cpu_count()),
         str(batch_size)]
  res = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if res.returncode:
    return None, f"failed: {res.stderr.strip().splitlines()[-1:]}"
  return json.loads(res.stdout.strip().splitlines()[-1])["images_per_s"], ""
