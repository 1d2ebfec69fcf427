r"""The PyTorch reference row of benchmarks/train_step_bench.py.

The same network as the JAX rows written in PyTorch (torchvision layout, CIFAR
or ImageNet stem, width knob, BN per view by running the encoder once per view,
2-/3-layer projector, predictor), the same loss and torch.optim.SGD (momentum
0.9, weight decay). train_step_bench.py runs it in a child interpreter
(``--torch_python``) with its own flags plus ``--torch_worker``, so torch stays
out of the project's dependencies and its memory is measured on its own.
"""
import resource
import time


def max_rss_mib() -> float:
  """Peak resident memory of this process (VmHWM; getrusage's max RSS survives exec)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stem(args) -> str:
  """The ResNet stem: --stem, else cifar up to 64 px and imagenet above."""
  return args.stem or ("cifar" if args.image_size <= 64 else "imagenet")


def projector_layers(args) -> int:
  """Projector depth: --projector_layers, else 2 for the cifar stem and 3 for imagenet."""
  return args.projector_layers or (2 if stem(args) == "cifar" else 3)


def _blocks():
  """The torchvision residual blocks (last BN scale of each block zero-initialised)."""
  # torch is optional: imported in the torch worker only (train_step_bench imports this module).
  import torch.nn as nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class Basic(nn.Module):
    expansion = 1

    def __init__(self, inp, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      nn.init.zeros_(self.bn2.weight)
      self.downsample = None
      if stride != 1 or inp != planes:
        self.downsample = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inp, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      nn.init.zeros_(self.bn3.weight)
      self.downsample = None
      if stride != 1 or inp != planes * 4:
        self.downsample = nn.Sequential(nn.Conv2d(inp, planes * 4, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes * 4))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = F.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  return Basic, Bottleneck


def build_model(args):
  """The encoder (ResNet + projector) and predictor as an nn.ModuleDict, on the CPU."""
  # torch is optional: imported in the torch worker only (train_step_bench imports this module).
  import torch.nn as nn  # pylint: disable=g-import-not-at-top

  Basic, Bottleneck = _blocks()  # pylint: disable=invalid-name
  stages = {18: (Basic, (2, 2, 2, 2)), 34: (Basic, (3, 4, 6, 3)),
            50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
            152: (Bottleneck, (3, 8, 36, 3))}
  block, counts = stages[args.depth]
  w = args.width
  if stem(args) == "cifar":
    layers = [nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
  else:
    layers = [nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
  inp = w
  for stage, n in enumerate(counts):
    for b in range(n):
      layers.append(block(inp, w * 2**stage, 2 if stage > 0 and b == 0 else 1))
      inp = w * 2**stage * block.expansion
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
  proj = []
  dim = inp
  for _ in range(projector_layers(args) - 1):
    proj += [nn.Linear(dim, args.projector_dim, bias=False), nn.BatchNorm1d(args.projector_dim),
             nn.ReLU()]
    dim = args.projector_dim
  proj += [nn.Linear(dim, args.projector_dim, bias=False),
           nn.BatchNorm1d(args.projector_dim, affine=False)]
  encoder = nn.Sequential(nn.Sequential(*layers), nn.Sequential(*proj))
  predictor = nn.Sequential(nn.Linear(args.projector_dim, args.predictor_hidden_dim, bias=False),
                            nn.BatchNorm1d(args.predictor_hidden_dim), nn.ReLU(),
                            nn.Linear(args.predictor_hidden_dim, args.projector_dim))
  return nn.ModuleDict({"encoder": encoder, "predictor": predictor})


def torch_worker(args) -> dict:
  """Builds the PyTorch reference, times --steps steps after --warmup, returns a dict."""
  # torch is optional: imported in the torch worker only (train_step_bench imports this module).
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  device = torch.device("cuda" if args.torch_device == "cuda" else "cpu")
  model = build_model(args).to(device)
  fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
  model = model.to(memory_format=fmt)
  opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=args.weight_decay)
  gen = torch.Generator().manual_seed(0)
  x1, x2 = (torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
            .to(device).contiguous(memory_format=fmt) for _ in range(2))
  autocast = args.dtype == "bfloat16"

  def d(p, z):
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()

  def step():
    xm = 0.5 * x1 + 0.5 * x2
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
      zs = [model["encoder"](x) for x in (x1, x2, xm)]  # BN statistics per view
      ps = [model["predictor"](z) for z in zs]
    zs = [z.float() for z in zs]
    ps = [p.float() for p in ps]
    loss_siam = 0.5 * d(ps[0], zs[1]) + 0.5 * d(ps[1], zs[0])
    loss_mix = d(ps[2], torch.maximum(zs[0], zs[1]))
    loss = 0.5 * loss_siam + 0.5 * loss_mix
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  for _ in range(args.warmup):
    step()
  sync()
  start = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  sync()
  elapsed = time.perf_counter() - start
  out = {"images_per_s": args.batch_size * args.steps / elapsed, "loss": float(loss),
         "max_rss_mib": max_rss_mib(), "threads": torch.get_num_threads(),
         "torch": torch.__version__}
  if device.type == "cuda":
    out["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
  return out
