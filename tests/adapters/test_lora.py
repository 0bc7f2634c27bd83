"""DreamBooth-style LoRA fine-tuning of a tiny SD-like model built from configs, watched through AcceleratedWatch.

A ``UNet2DConditionModel`` with cross-attention, a one-layer CLIP text encoder from a ``transformers`` config (the
prompts are token ids of a 16-word vocabulary: no tokenizer files), peft LoRA adapters on the attention projections
of the frozen UNet (``unet.add_adapter``, as diffusers' ``train_dreambooth_lora.py`` does), two instance images
trained under the instance prompt. The latent space is the pixel space (8x8x3: no VAE, which the scripts keep
frozen). The watch measures the empty prompt's samples (the unconditional-style sharpness, ``null_cond``) and the
paper's conditional metric per prompt (``prompt_embeds``: 0 the instance prompt, 1 the class prompt); the stop rule
watches the instance prompt's ``||H^D s^D||``, which rises as the adapters learn the instance images, and the safe
adapter weights come back on the stop.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("accelerate")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
from peft import LoraConfig  # noqa: E402
from test_accelerate import instance_images  # noqa: E402

from memcallback import MemorizationWatch, ProbeConfig, SharpnessConfig, StopConfig  # noqa: E402
from memcallback.adapters import AcceleratedWatch  # noqa: E402
from memcallback.adapters.checkpointing import WEIGHTS_FILE, SafeFolder  # noqa: E402
from memcallback.measure import ConditionalConfig  # noqa: E402

#: token ids: <start> a photo of sks dog <end> ... (0 start, 1 end/pad): instance prompt, class prompt, empty prompt
PROMPTS = torch.tensor([[0, 3, 4, 5, 6, 7, 1, 1], [0, 3, 4, 5, 7, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1]])
INSTANCE, MONITOR = 0, "memorization/cond/cond0/hds"
#: the instance prompt's ||H^D s^D|| rises as the adapters learn (measured: 0.35 at step 40, 0.78 at 80): fires at 80
STOP = StopConfig(monitor=MONITOR, threshold=0.6, min_delta=0.1, patience=1, restore_safe_weights=True)
EVERY = 40


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_sd() -> tuple[torch.nn.Module, torch.Tensor]:
    """The LoRA-adapted tiny UNet (base frozen) and the text encoder's embeddings of the three prompts."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)
    config = transformers.CLIPTextConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=8, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1)
    with torch.no_grad():
        embeddings = transformers.CLIPTextModel(config)(PROMPTS)[0]
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    return unet, embeddings


def finetune(max_steps: int, watch: MemorizationWatch | None = None, safe_dir=None):
    """The DreamBooth loop: instance images under the instance prompt, only the adapters trained."""
    accelerator = Accelerator(cpu=True)
    unet, embeddings = tiny_sd()
    images = instance_images()[:2].repeat(1, 3, 1, 1)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100)
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-2)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    helper = None
    if watch is not None:
        helper = AcceleratedWatch(watch, accelerator, safe_dir=safe_dir)
        helper.setup(unet, scheduler, train_data=images, null_cond=embeddings[2], prompt_embeds=embeddings[:2])
    generator = torch.Generator().manual_seed(0)
    step = 0
    while not (helper is not None and helper.after_step(step)) and step < max_steps:
        clean = images[torch.randint(len(images), (4,), generator=generator)]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, 100, (4,), generator=generator)
        prompt = embeddings[INSTANCE].expand(4, -1, -1)
        loss = F.mse_loss(unet(scheduler.add_noise(clean, noise, timesteps), timesteps, prompt).sample, noise)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
    return accelerator.unwrap_model(unet), step


def adapters(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in unet.state_dict().items() if "lora" in k}


def test_a_lora_finetuning_stops_as_the_instance_prompt_sharpens_and_restores_the_safe_adapters(tmp_path) -> None:
    watch = MemorizationWatch(every_n_steps=EVERY, probes=ProbeConfig(num_samples=4, num_sampling_steps=5),
                              sharpness=SharpnessConfig(k=4), stop=STOP,
                              conditions=ConditionalConfig(labels=(0, 1), num_samples_per_cond=2))
    unet, steps = finetune(400, watch, safe_dir=tmp_path / "safe")
    instance = [row["cond/cond0/hds"] for row in watch.history]
    assert watch.stopped_step is not None and steps == watch.stopped_step < 400, instance
    assert instance[-1] > 0.6 > instance[0]  # the instance prompt sharpened past the threshold
    assert {"score", "nn_rate", "cond/cond1/hds", "cond/sharpest_condition"} <= set(watch.history[-1])
    safe_unet, _ = finetune(watch.safe_step)  # unwatched, up to the safe step
    safe = adapters(safe_unet)
    assert len(safe) > 0 and [k for k, v in adapters(unet).items() if not torch.equal(v, safe[k])] == []
    # the frozen base is untouched, and the safe folder holds the adapters only (the changing tensors)
    assert [k for k, v in unet.state_dict().items() if not torch.equal(v, safe_unet.state_dict()[k])] == []
    assert set(watch.safe_weights.state) == {f"unet.{k}" for k in safe}  # the host copy: adapters, no frozen base
    folder = SafeFolder(tmp_path / "safe")
    assert folder.step() == watch.safe_step and (folder.path / WEIGHTS_FILE).is_file()
    state, _ = folder.read(unet)
    assert all(torch.equal(state[k], v) for k, v in safe.items())
