"""evaluation/encoder.py: one restore path (workdir or file), the embed function on the ResNet."""
import json
import shutil

import jax
import numpy as np
import pytest

from configs import knn as knn_config
from configs import linear_probe as probe_config
from mixsiam_jax import sharding, weights
from mixsiam_jax.checkpoints import storage
from mixsiam_jax.evaluation import encoder, knn_program, linear_probe
from mixsiam_jax.models import MixSiamNetwork, ResNet
from mixsiam_jax.options.programs import from_config
from mixsiam_jax.options.shared import FileArchitecture
from tests.helpers import model_options, snapshot
from tests.test_checkpoints_storage import (flip_a_byte_in_the_largest_array_file,
                                            restores_silently_with_other_values)


RESNET50 = FileArchitecture(depth=50, width=64, stem="imagenet", image_size=224)


def test_embed_fn_is_the_networks_backbone_in_inference_mode():
  network = MixSiamNetwork(model_options(depth=18, width=4, stem="cifar", projector_layers=2,
                                         projector_hidden_dim=8, projector_dim=8,
                                         predictor_hidden_dim=4, conv_impl="xla"), "cpu")
  images = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
  variables = network.init(jax.random.key(0), images[:, None], train=True)
  # Non-trivial running statistics, so inference mode is visible.
  variables = jax.tree.map(lambda x: x + 0.1, variables)
  expected = network.apply(variables, images, method=network.embed)
  mesh = sharding.create_mesh()
  resnet = encoder.backbone_of(network)
  assert isinstance(resnet, ResNet) and resnet.feature_dim == 32
  from_network = encoder.make_embed_fn(resnet, mesh, subtree="backbone")(variables, images)
  backbone = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
  from_resnet = encoder.make_embed_fn(resnet, mesh)(backbone, images)
  np.testing.assert_array_equal(np.asarray(from_network), np.asarray(from_resnet))
  # Eager on one device vs jitted on eight: the same function up to float rounding.
  np.testing.assert_allclose(np.asarray(from_resnet), np.asarray(expected), rtol=1e-6)
  assert from_resnet.sharding.spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)


def test_bad_pretrained_paths_are_named(tmp_path):
  mesh = sharding.create_mesh()
  with pytest.raises(encoder.EncoderError, match="pretrained is empty"):
    encoder.restore_encoder("", mesh)
  with pytest.raises(storage.CheckpointError,
                     match=f"pretrained={tmp_path}/missing does not exist"):
    encoder.restore_encoder(str(tmp_path / "missing"), mesh)
  (tmp_path / "empty").mkdir()
  with pytest.raises(storage.CheckpointError, match="holds no checkpoints/ directory"):
    encoder.restore_encoder(str(tmp_path / "empty"), mesh)
  (tmp_path / "nockpt" / "checkpoints").mkdir(parents=True)
  with pytest.raises(storage.CheckpointError, match="holds no complete checkpoint"):
    encoder.restore_encoder(str(tmp_path / "nockpt"), mesh)
  with pytest.raises(weights.WeightsError, match="nothere.npz"):
    encoder.restore_encoder(str(tmp_path / "nothere.npz"), mesh, file_architecture=RESNET50)


@pytest.mark.parametrize("program,kind", [("linear_probe", "a linear-probe"), ("knn", "a kNN")])
def test_an_evaluation_workdir_as_pretrained_says_what_it_is(tmp_path, program, kind):
  (tmp_path / "checkpoints" / "6").mkdir(parents=True)
  (tmp_path / "config.json").write_text(json.dumps({"program": program}))
  with pytest.raises(encoder.EncoderError,
                     match=f"pretrained={tmp_path} is {kind} workdir.*wants a pretraining workdir"):
    encoder.restore_encoder(str(tmp_path), sharding.create_mesh())


@pytest.mark.slow
def test_restores_a_checkpoint_written_on_eight_devices_onto_one(tiny_pretrained):
  frozen = encoder.restore_encoder(str(tiny_pretrained), sharding.create_mesh(jax.devices()[:1]))
  assert (frozen.step, frozen.image_size, frozen.feature_dim) == (6, 16, 64)
  assert (frozen.resnet.depth, frozen.resnet.width, frozen.resnet.stem) == (18, 8, "cifar")
  assert set(frozen.variables) == {"params", "batch_stats"}
  assert "conv1" in frozen.variables["params"]
  leaf = jax.tree.leaves(frozen.variables)[0]
  assert leaf.sharding.device_set == {jax.devices()[0]}
  frozen.check_unchanged()
  older = encoder.restore_encoder(str(tiny_pretrained), sharding.create_mesh(), step=3)
  assert older.step == 3 and older.fingerprint != frozen.fingerprint


@pytest.mark.slow
def test_truncated_checkpoint_is_reported_with_its_path(tiny_pretrained, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(tiny_pretrained, broken)
  for path in (broken / "checkpoints" / "6" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 100:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(storage.CheckpointError, match=r"checkpoint .*checkpoints/6"):
    encoder.restore_encoder(str(broken), sharding.create_mesh())


@pytest.mark.slow
def test_an_encoder_whose_arrays_differ_from_their_checksums_is_refused(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(tiny_pretrained, broken)
  mesh = sharding.create_mesh()
  intact = encoder.restore_encoder(str(tiny_pretrained), mesh).variables
  # A byte of the encoder's arrays: unverified, they would restore silently, with other values.
  flip_a_byte_in_the_largest_array_file(
      broken / "checkpoints" / "6", lambda: restores_silently_with_other_values(
          lambda: encoder.restore_encoder(str(broken), mesh).variables, intact))
  refusal = (rf"^checkpoint {broken}/checkpoints/6 is corrupt \(array (params|batch_stats)/backbone/"
             r".* does not match the checksum recorded when it was saved: .*\); step 3 is intact: "
             rf"move the broken step away \(mv {broken}/checkpoints/6 ")
  with pytest.raises(storage.CheckpointError, match=refusal):
    encoder.restore_encoder(str(broken), mesh)
  before = snapshot(broken)
  # The kNN program and the linear probe refuse it before they write anything.
  for module, run in ((knn_config, knn_program.run_knn),
                      (probe_config, linear_probe.run_linear_probe)):
    config = module.get_config()
    config.pretrained = str(broken)
    config.dataset = config.eval_dataset = f"folder:{cifar_jpeg_folder}"
    workdir = tmp_path / config.program
    with pytest.raises(storage.CheckpointError, match=refusal):
      run(from_config(config), str(workdir))
    assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()
  assert snapshot(broken) == before


@pytest.mark.slow
def test_exported_weights_restore_like_the_workdir(tiny_pretrained, tmp_path):
  exported = tmp_path / "tiny.npz"
  weights.main(["export", f"--workdir={tiny_pretrained}", f"--out={exported}"])
  assert "module.encoder.layer1.0.conv1.weight" in np.load(exported).files
  mesh = sharding.create_mesh()
  from_workdir = encoder.restore_encoder(str(tiny_pretrained), mesh)
  from_file = encoder.restore_encoder(
      str(exported), mesh, file_architecture=FileArchitecture(18, 8, "cifar", 16))
  assert (from_file.step, from_file.image_size, from_file.resnet) == (0, 16, from_workdir.resnet)
  assert from_file.fingerprint == from_workdir.fingerprint  # Bit-identical variables.
  images = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  np.testing.assert_array_equal(
      np.asarray(encoder.make_embed_fn(from_file.resnet, mesh)(from_file.variables, images)),
      np.asarray(encoder.make_embed_fn(from_workdir.resnet, mesh)(from_workdir.variables, images)))
  with pytest.raises(encoder.EncoderError,
                     match=f"pretrained={exported} does not hold the ResNet-34"):
    encoder.restore_encoder(str(exported), mesh,
                            file_architecture=FileArchitecture(34, 8, "cifar", 16))


def test_a_file_of_another_architecture_is_named_with_the_architecture(tmp_path):
  np.savez(tmp_path / "other.npz", a=np.zeros(3, np.float32))
  with pytest.raises(encoder.EncoderError,
                     match=rf"^pretrained={tmp_path}/other.npz does not hold the ResNet-50 \(width "
                           r"64, imagenet stem\) that --config.pretrained_model describes: "):
    encoder.restore_encoder(str(tmp_path / "other.npz"), sharding.create_mesh(),
                            file_architecture=RESNET50)
