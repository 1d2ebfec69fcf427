"""programs.py: every config becomes its program's options once, checked, from the config's values."""
import dataclasses
import io
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile

import pytest
import tensorflow_datasets as tfds
from absl import flags
from ml_collections import config_flags
from PIL import Image

from configs import cifar10, imagenet, knn as knn_config, linear_probe as probe_config
from configs import simsiam_cifar10
from mixsiam_jax.data import DatasetError, sources
from mixsiam_jax.options import programs, shared
from mixsiam_jax.options.checks import OptionsError
from mixsiam_jax.options.shared import Cadence, CheckpointOptions, FileArchitecture, KnnOptions


@pytest.mark.parametrize("get_config,kind", [
    (cifar10.get_config, programs.PretrainOptions),
    (imagenet.get_config, programs.PretrainOptions),
    (simsiam_cifar10.get_config, programs.PretrainOptions),
    (probe_config.get_config, programs.ProbeOptions),
    (knn_config.get_config, programs.KnnProgramOptions),
])
def test_every_config_builds_the_options_of_its_program(get_config, kind):
  config = get_config()
  options = programs.from_config(config)
  assert type(options) is kind
  assert programs.program_name(options) == config.get("program", "pretrain")
  assert options.record["program"] == config.program  # what config.json records


def test_pretraining_options_hold_the_configs_values():
  config = cifar10.get_config()
  opts = programs.pretrain_options(config)
  assert (opts.optim.base_lr, opts.optim.weight_decay) == (0.03, 4e-4)  # not a library default
  assert opts.method.lam == config.method.lam and opts.model.depth == 18
  assert opts.data == shared.TrainData(
      dataset="tfds:cifar10", split="train", crop_scale=(0.2, 1.0), skip_bad_images=True,
      device_prefetch=2, resize_on_device=config.data.resize_on_device, canvas_size=32)
  assert opts.evaluation.image_size == config.image_size and opts.knn == KnnOptions(200, 0.1)
  assert opts.cadence == Cadence(log_every_steps=50, checkpoint_every_steps=1000,
                                 eval_every_steps=5000)
  assert opts.checkpoints == CheckpointOptions(keep=3, keep_every_steps=0, async_save=True)
  assert opts.model.num_classes == 0  # set by the program from the data
  config.eval_dataset = ""
  assert programs.pretrain_options(config).evaluation is None


def test_probe_options_hold_the_configs_values():
  opts = programs.probe_options(probe_config.get_config("fast"))
  assert (opts.optim.name, opts.optim.base_lr, opts.optim.fix_predictor_lr) == ("sgd", 0.3, False)
  assert opts.data.image_size == shared.FROM_ENCODER and not opts.augment
  assert opts.checkpoints.async_save is False and opts.cadence.eval_every_steps == 0
  assert opts.encoder.file_architecture == FileArchitecture(50, 64, "imagenet", 32)


@pytest.mark.parametrize("get_config,field", [
    (cifar10.get_config, "data.canvas_size"), (cifar10.get_config, "model.remat"),
    (cifar10.get_config, "method.mix_alpha"), (cifar10.get_config, "seed"),
    (cifar10.get_config, "knn.temperature"), (probe_config.get_config, "num_epochs"),
    (knn_config.get_config, "pretrained_model.stem"), (knn_config.get_config, "eval_split"),
])
def test_a_missing_field_is_refused_naming_it(get_config, field):
  config = get_config()
  *parents, name = field.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  delattr(node, name)
  with pytest.raises(OptionsError, match=re.escape(f"config.{field} is missing")):
    programs.from_config(config)


def test_option_fields_have_no_defaults_of_their_own():
  """The configs are the one place defaults live (num_classes is not a config field)."""
  classes = [c for module in (programs, shared) for c in vars(module).values()
             if dataclasses.is_dataclass(c) and c.__module__ == module.__name__]
  classes += [programs.MethodOptions, programs.ModelOptions,
              programs.OptimOptions, programs.PhotometricOptions]
  defaults = {f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c)
              if f.default is not dataclasses.MISSING
              or f.default_factory is not dataclasses.MISSING}
  assert defaults == {"ModelOptions.num_classes"}


@pytest.mark.parametrize("get_config,field,value,needle", [
    (cifar10.get_config, "log_every_steps", 0, "log_every_steps=0 must be a positive integer"),
    (cifar10.get_config, "checkpoint_every_steps", 2.5, "checkpoint_every_steps=2.5"),
    (cifar10.get_config, "eval_every_steps", -1, "eval_every_steps=-1 must be an integer >= 0"),
    (cifar10.get_config, "keep_checkpoints", 0, "keep_checkpoints=0"),
    (cifar10.get_config, "keep_checkpoints_every_steps", -3, "keep_checkpoints_every_steps=-3"),
    (cifar10.get_config, "async_checkpointing", "yes", "async_checkpointing='yes'"),
    (cifar10.get_config, "data.device_prefetch", 0, "data.device_prefetch=0"),
    (cifar10.get_config, "data.crop_scale", (0.5, 0.2), "data.crop_scale=(0.5, 0.2)"),
    (cifar10.get_config, "data.canvas_size", 0, "data.canvas_size=0 must be a positive integer"),
    (cifar10.get_config, "data.resize_on_device", "yes", "data.resize_on_device='yes'"),
    (imagenet.get_config, "data.photometric_on_device", False,
     "data.resize_on_device=True needs data.photometric_on_device=True"),
    (cifar10.get_config, "online_probe", 1, "online_probe=1 must be true or false"),
    (cifar10.get_config, "profile_steps", -1, "profile_steps=-1"),
    (cifar10.get_config, "optim.name", "lars", "pretraining uses 'sgd'"),
    (cifar10.get_config, "model.depth", 20, "model.depth=20 must be one of"),
    (cifar10.get_config, "eval_batch_size", 0, "eval_batch_size=0"),
    (cifar10.get_config, "knn.k", 0, "knn.k=0"),
    (cifar10.get_config, "knn.temperature", -0.1, "knn.temperature=-0.1"),
    (cifar10.get_config, "pretrained", "/runs/a", "pretrained='/runs/a' is not used by "
                                                  "pretraining"),
    (probe_config.get_config, "batch_size", 0, "batch_size=0"),
    (probe_config.get_config, "optim.name", "adam", "optim.name='adam'"),
    (probe_config.get_config, "probe.augment", "no", "probe.augment='no'"),
    (probe_config.get_config, "num_train_steps", 0, "num_train_steps=0 must be -1"),
    (probe_config.get_config, "image_size", 0,
     "image_size=0 must be a positive integer, or -1 for the size the encoder was trained at"),
    (probe_config.get_config, "data.eval_transform", "crop", "data.eval_transform='crop'"),
    (knn_config.get_config, "pretrained_model.depth", 19, "pretrained_model.depth=19"),
    (knn_config.get_config, "pretrained_model.image_size", 0,
     "pretrained_model.image_size=0"),
    (knn_config.get_config, "program", "train", "config.program='train' must be one of"),
])
def test_a_bad_value_is_refused_naming_its_field(get_config, field, value, needle):
  config = get_config()
  *parents, name = field.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  with node.ignore_type():
    node[name] = value
  with pytest.raises(OptionsError, match=re.escape(needle)):
    programs.from_config(config)


def test_a_bad_training_data_set_is_refused_before_anything_is_opened():
  config = cifar10.get_config()
  config.dataset = "folder"
  with pytest.raises(DatasetError, match="dataset='folder' must be 'tfds:NAME'"):
    programs.from_config(config)


# --- ImageNet: the commands of docs/imagenet.md, both routes -------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGENET_DOC = ROOT / "docs" / "imagenet.md"
DOC_DATA = "/data/imagenet"  # the folder route's path in the doc's commands
# Validation image number -> WordNet id, as ImageNet's validation ground truth (and the
# widely used valprep.sh, whose first line moves image 293 to n01440764) has them.
VAL_CLASSES = {1: "n01751748", 2: "n09193705", 3: "n02105855", 293: "n01440764"}


def imagenet_doc_commands():
  """Each `python main.py ...` command of docs/imagenet.md, as its argument list."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", IMAGENET_DOC.read_text(), re.S):
    for line in block.replace("\\\n", " ").splitlines():
      if line.startswith("python main.py"):
        commands.append(shlex.split(line)[1:])
  return commands


def doc_snippet(first_line):
  """The code block of docs/imagenet.md that starts with ``first_line``."""
  blocks = re.findall(r"```(?:python|bash)\n(.*?)```", IMAGENET_DOC.read_text(), re.S)
  return next(b for b in blocks if b.startswith(first_line))


def options_of_command(argv, monkeypatch):
  """The options main.py builds from a command line (its config flags)."""
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
  flag_values(argv)
  return programs.from_config(flag_values.config)


def data_sets(options):
  """(field, data set, split) of every data set a program opens."""
  data = options.evaluation if isinstance(options, programs.PretrainOptions) else options.data
  sets = [("dataset", data.dataset, data.train_split), ("eval_dataset", data.eval_dataset,
                                                          data.eval_split)]
  if isinstance(options, programs.PretrainOptions):
    sets.append(("dataset", options.data.dataset, options.data.split))
  return sets


def test_the_imagenet_doc_has_each_program_on_both_routes():
  routes = {(argv[1], any(a.startswith("--config.dataset=folder:") for a in argv))
            for argv in imagenet_doc_commands()}
  assert routes == {(config, folder) for folder in (False, True) for config in (
      "--config=configs/imagenet.py", "--config=configs/knn.py:imagenet",
      "--config=configs/linear_probe.py:imagenet")}


@pytest.mark.parametrize("argv", imagenet_doc_commands(), ids=" ".join)
def test_each_imagenet_doc_command_builds_its_programs_options(argv, monkeypatch):
  options = options_of_command(argv, monkeypatch)
  folder = "--config.dataset=folder:/data/imagenet/train" in argv
  train, val = ((f"folder:{DOC_DATA}/train", f"folder:{DOC_DATA}/val") if folder
                else ("tfds:imagenet2012", "tfds:imagenet2012"))
  assert sorted(data_sets(options)) == sorted(
      [("dataset", train, "train"), ("eval_dataset", val, "validation")]
      + ([("dataset", train, "train")] if "configs/imagenet.py" in argv[1] else []))
  if isinstance(options, programs.PretrainOptions):  # the paper's recipe
    assert (options.model.depth, options.image_size, options.batch_size) == (50, 224, 128)
    assert (options.optim.base_lr, options.method.aggregation) == (0.05, "max")
    assert options.evaluation.transform == "resize_center_crop"
  else:
    assert options.data.image_size == shared.FROM_ENCODER
    assert options.data.transform == "resize_center_crop"
    assert options.encoder.pretrained == "/ckpt/mixsiam_in1k"
  if isinstance(options, programs.ProbeOptions):
    assert (options.optim.name, options.optim.base_lr, options.batch_size) == ("lars", 0.02, 4096)


def _jpeg(shade):
  buffer = io.BytesIO()
  Image.new("RGB", (8, 8), (shade, 255 - shade, 0)).save(buffer, "JPEG")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def fake_imagenet_folder(tmp_path_factory):
  """DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG, val sorted by docs/imagenet.md's script."""
  root = tmp_path_factory.mktemp("imagenet")
  for wnid in VAL_CLASSES.values():
    (root / "train" / wnid).mkdir(parents=True)
    for i in range(2):
      (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(_jpeg(40 * i))
  val = root / "val"
  val.mkdir()
  for number in VAL_CLASSES:
    (val / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(_jpeg(number % 256))
  script = root / "sort_imagenet_val.py"
  script.write_text(doc_snippet("# sort_imagenet_val.py"))
  subprocess.run([sys.executable, str(script), str(val)], check=True, timeout=60)
  return root


def test_the_docs_script_sorts_validation_images_into_their_classes(fake_imagenet_folder):
  val = fake_imagenet_folder / "val"
  assert {p.relative_to(val).as_posix() for p in val.rglob("*") if p.is_file()} == {
      f"{wnid}/ILSVRC2012_val_{number:08d}.JPEG" for number, wnid in VAL_CLASSES.items()}


@pytest.mark.parametrize("argv", [a for a in imagenet_doc_commands()
                                  if any(x.startswith("--config.dataset=folder:") for x in a)],
                         ids=" ".join)
def test_each_folder_command_of_the_imagenet_doc_opens_an_imagenet_layout(
    argv, fake_imagenet_folder, monkeypatch):
  argv = [a.replace(DOC_DATA, str(fake_imagenet_folder)) for a in argv]
  options = options_of_command(argv, monkeypatch)
  infos = {(dataset, split): sources.get_dataset_info(dataset, split, field=field)
           for field, dataset, split in data_sets(options)}
  wnids = tuple(sorted(VAL_CLASSES.values()))
  assert {(d.split("/")[-1], s): (i.num_examples, i.class_names) for (d, s), i in infos.items()} == {
      ("train", "train"): (8, wnids), ("val", "validation"): (4, wnids)}


@pytest.mark.slow
def test_the_tfds_route_prepares_imagenet2012_from_its_archives(tmp_path):
  """The doc's TFDS command on two tiny archives of ImageNet's layout; the program reads it."""
  archives = tmp_path / "archives"
  archives.mkdir()

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  wnids = sorted(VAL_CLASSES.values())
  with tarfile.open(archives / "ILSVRC2012_img_train.tar", "w") as outer:
    for wnid in wnids:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as tar:
        for i in range(2):
          add(tar, f"{wnid}_{i}.JPEG", _jpeg(40 * i))
      add(outer, f"{wnid}.tar", inner.getvalue())
  # TFDS pairs the sorted validation names with its label list: the first images only.
  numbers = (1, 2, 3)
  with tarfile.open(archives / "ILSVRC2012_img_val.tar", "w") as tar:
    for number in numbers:
      add(tar, f"ILSVRC2012_val_{number:08d}.JPEG", _jpeg(number))
  command = doc_snippet('python -c "import tensorflow_datasets').replace(
      "/archives/imagenet", str(archives))
  data_dir = tmp_path / "tfds"
  subprocess.run(["bash", "-c", command], check=True, timeout=120, cwd=tmp_path,
                 env=dict(os.environ, TFDS_DATA_DIR=str(data_dir)), capture_output=True)

  tfds_options = sources.TfdsOptions(data_dir=str(data_dir))
  train = sources.get_dataset_info("tfds:imagenet2012", "train", tfds_options=tfds_options)
  val = sources.get_dataset_info("tfds:imagenet2012", "validation", field="eval_dataset",
                                 tfds_options=tfds_options)
  assert (train.num_examples, val.num_examples) == (2 * len(wnids), len(numbers))
  assert train.num_classes == val.num_classes == 1000  # all of ImageNet's, named by wnid
  assert train.class_names == tuple(sorted(train.class_names)) == val.class_names
  # TFDS labels the validation images as the doc's script sorts them.
  examples = tfds.data_source("imagenet2012", split="validation", data_dir=str(data_dir))
  assert {ex["file_name"].decode(): train.class_names[ex["label"]] for ex in examples} == {
      f"ILSVRC2012_val_{n:08d}.JPEG": VAL_CLASSES[n] for n in numbers}
