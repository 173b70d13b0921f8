"""``student.init``: a job names the weights its student starts from (an upload or an earlier
job's student); ``POST /jobs`` checks that they exist, are the key's, and fit the student."""

from __future__ import annotations

import torch

from tests.api.test_checkpoints import state_dict, torch_bytes, upload
from tests.api.test_cost_matrices import matrix_form, torch_file
from tests.api.test_jobs import VANILLA, submit


def with_init(body: dict, **init) -> dict:
    return body | {"student": {**body["student"], "init": init}}


def error(response) -> tuple[list, str]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    return detail["loc"][1:], detail["msg"]


def test_a_job_starts_its_student_from_an_upload(client, alice, bob):
    weights = upload(client, alice).json()["id"]  # resnet8, 10 classes: mnist5k's
    accepted = submit(client, alice, with_init(VANILLA, checkpoint_id=weights))
    assert accepted.status_code == 202, accepted.text
    init = accepted.json()["spec"]["student"]["init"]
    assert (init["checkpoint_id"], init["backbone_only"]) == (weights, False)

    loc = ["student", "init", "checkpoint_id"]
    assert error(submit(client, alice, with_init(VANILLA, checkpoint_id="ck_nope"))) == (
        loc, "no checkpoint with this id")  # fmt: skip
    assert error(submit(client, bob, with_init(VANILLA, checkpoint_id=weights)))[0] == loc
    other = VANILLA | {"student": {"arch": "resnet14", "init": {"checkpoint_id": weights}}}
    assert error(submit(client, alice, other)) == (
        loc, "weights of 'resnet8' do not fit student 'resnet14' (it starts from 'resnet14' "
        "weights)")  # fmt: skip
    matrix = upload(client, alice, torch_file(torch.zeros(10, 10)), "linear_cka.pth",
                    form=matrix_form()).json()["id"]  # fmt: skip
    assert error(submit(client, alice, with_init(VANILLA, checkpoint_id=matrix))) == (
        loc, f"checkpoint {matrix} is a cost_matrix, not model weights")  # fmt: skip


def test_another_class_count_needs_backbone_only(client, alice):
    wide = upload(client, alice, torch_bytes(state_dict(100)), "imagenet-like.pth",
                  form={"arch": "resnet8", "num_classes": "100"}).json()["id"]  # fmt: skip
    assert error(submit(client, alice, with_init(VANILLA, checkpoint_id=wide))) == (
        ["student", "init", "checkpoint_id"],
        "the weights have 100 classes but the dataset has 10; set backbone_only to load all "
        "but the classifier",
    )
    body = with_init(VANILLA, checkpoint_id=wide, backbone_only=True)
    assert submit(client, alice, body).status_code == 202


def test_init_sources_and_paths(client, alice):
    weights = upload(client, alice).json()["id"]
    both = with_init(VANILLA, checkpoint_id=weights, job_id="job_x")
    assert error(submit(client, alice, both)) == (
        ["student", "init"], "give exactly one of checkpoint_id, job_id, path")  # fmt: skip
    path = with_init(VANILLA, path="/etc/passwd")
    assert error(submit(client, alice, path)) == (
        ["student", "init", "path"],
        "paths are not accepted by the service; upload the file and give its id",
    )
    unknown_job = with_init(VANILLA, job_id="job_nope")
    assert error(submit(client, alice, unknown_job)) == (
        ["student", "init", "job_id"], "no job with this id")  # fmt: skip
    queued = submit(client, alice).json()["id"]  # not succeeded: no student yet
    assert error(submit(client, alice, with_init(VANILLA, job_id=queued)))[1] == (
        "job is queued; only a succeeded job's student can start a student")  # fmt: skip
    born_again = with_init(VANILLA | {"method": "kd", "generations": 2}, checkpoint_id=weights)
    assert error(submit(client, alice, born_again)) == (
        ["student", "init"], "not available with generations")  # fmt: skip


def test_a_detector_starts_from_imagenet_backbone_weights(client, alice):
    # an ImageNet ResNet-18 classifier as uploaded (only its classifier shape is checked here)
    imagenet = {"fc.weight": torch.zeros(1000, 4), "fc.bias": torch.zeros(1000)}
    backbone = upload(client, alice, torch_bytes(imagenet), "resnet18.pth",
                      form={"arch": "tv_resnet18", "num_classes": "1000"}).json()["id"]  # fmt: skip
    detection = {"task": "detection", "method": "vanilla", "dataset": {"name": "shapes_mini"},
                 "student": {"arch": "fasterrcnn_resnet18_fpn"},
                 "training": {"epochs": 1, "batch_size": 2}}  # fmt: skip
    accepted = submit(client, alice, with_init(detection, checkpoint_id=backbone))
    assert accepted.status_code == 202, accepted.text
    r50 = detection | {"student": {"arch": "fasterrcnn_resnet50_fpn"}}
    assert error(submit(client, alice, with_init(r50, checkpoint_id=backbone)))[1] == (
        "weights of 'tv_resnet18' do not fit student 'fasterrcnn_resnet50_fpn' (it starts "
        "from 'fasterrcnn_resnet50_fpn' or 'tv_resnet50' weights)"
    )


def test_resnet101_and_mobilenet_v2_detectors_start_from_their_imagenet_classifiers(client, alice):
    # the classifier tensors only (the upload checks their shape; the worker loads the rest)
    ids = {}
    for arch, key in (("tv_resnet101", "fc"), ("tv_mobilenet_v2", "classifier.1")):
        imagenet = {f"{key}.weight": torch.zeros(1000, 4), f"{key}.bias": torch.zeros(1000)}
        ids[arch] = upload(client, alice, torch_bytes(imagenet), f"{arch}.pth",
                           form={"arch": arch, "num_classes": "1000"}).json()["id"]  # fmt: skip
    detection = {"task": "detection", "method": "vanilla", "dataset": {"name": "shapes_mini"},
                 "training": {"epochs": 1, "batch_size": 2}}  # fmt: skip
    r101 = detection | {"student": {"arch": "fasterrcnn_resnet101_fpn"}}
    mv2 = detection | {"student": {"arch": "fasterrcnn_mobilenet_v2_fpn"}}
    for body, arch in ((r101, "tv_resnet101"), (mv2, "tv_mobilenet_v2")):
        for backbone_only in (False, True):
            init = {"checkpoint_id": ids[arch], "backbone_only": backbone_only}
            accepted = submit(client, alice, with_init(body, **init))
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["spec"]["student"]["init"] == init | {
                "job_id": None,
                "path": None,
            }
    mismatched = submit(client, alice, with_init(r101, checkpoint_id=ids["tv_mobilenet_v2"]))
    assert error(mismatched) == (
        ["student", "init", "checkpoint_id"],
        "weights of 'tv_mobilenet_v2' do not fit student 'fasterrcnn_resnet101_fpn' (it starts "
        "from 'fasterrcnn_resnet101_fpn' or 'tv_resnet101' weights)",
    )
    mismatched = submit(client, alice, with_init(mv2, checkpoint_id=ids["tv_resnet101"]))
    assert error(mismatched)[1] == (
        "weights of 'tv_resnet101' do not fit student 'fasterrcnn_mobilenet_v2_fpn' (it starts "
        "from 'fasterrcnn_mobilenet_v2_fpn' or 'tv_mobilenet_v2' weights)"
    )
