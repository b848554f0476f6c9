"""The training step as one ``nn.Graph`` (``train.sh --graph``): forward, loss, backward and the SGD update compiled
together by OneFlow, data parallel through global tensors.

What runs where:

* **In the graph**, per step: normalisation, backbone, heads, the loss (:meth:`SSD.per_image_losses`, the same code
  eager training runs), backward, the learning rate (:class:`EngineScheduleLR`, computed by OneFlow from its own
  step counter), the SGD update with momentum and weight decay, and under ``--amp`` (CUDA only) float16 autocast
  with OneFlow's dynamic loss scaling (``config.enable_amp``, ``set_grad_scaler``).
* **On the host**, per step: the targets are checked (the eager ``ValueError`` messages) and padded to a fixed
  number of boxes per image with a validity mask, because a graph needs static shapes: as many as the dataset's
  busiest image has (:func:`box_capacity`), or :data:`MAX_BOXES`.
* **Eagerly**, as before: data loading, logging, evaluation and checkpoints. They read the eager model and optimizer,
  into which :meth:`GraphTrainer.export` copies the graph's weights and momentum (after every epoch and before
  every checkpoint), so checkpoints have the eager format and either mode resumes the other's.

**Data parallelism** is OneFlow's graph way, not DistributedDataParallel: the graph holds a copy of the model as
global tensors broadcast over all processes (``sbp.broadcast``; rank 0's values), each step's batch is the
concatenation of every process's images along dim 0 (``sbp.split(0)``), and OneFlow inserts the gradient
all-reduce. The loss is what eager DDP optimises: each process's loss is divided by that process's own number of
positives, and the gradient is the mean over processes (see :class:`TrainingLosses`).

**Differences from eager training**, besides float32 rounding (tests/test_graph_mode.py): training images must all
be at the model's input size (the training transform's output is); an image with more boxes than the step holds
keeps its first ones, counted and reported (cannot happen in the training program, see :func:`box_capacity`).
"""
import copy

import oneflow as flow
from oneflow import nn
from oneflow.nn.optimizer.lr_scheduler import LRScheduler

from cv.detection.engine import distributed as dist

# Ground-truth boxes per image that a graph step takes when not told (its targets are padded to exactly this
# many): more than the busiest images of COCO 2017 (about 90 boxes once crowd regions are dropped) and Pascal VOC
# have. The training program sizes it from its dataset instead (box_capacity), so that nothing is ever cut; an
# image with more boxes than the step takes keeps its first ones, and GraphTrainer counts and reports such images
# (eager training would use them all). The padding is not free on CPU: IoU and matching over [N, 100, 8732] go
# through OneFlow's slow CPU broadcast kernels; on a GPU it is negligible.
MAX_BOXES = 100

# The names OneFlow 0.9 gives the graph's own state (found in nn.Graph.state_dict() and in its job passes
# auto_train_step.cpp, dynamic_loss_scale_schedule_pass.cpp): the step counter the learning rate is computed from,
# each parameter's SGD momentum, and the dynamic loss scale.
TRAIN_STEP = "System-Train-TrainStep"
MOMENTUM = "{block}.{param}-momentum"
LOSS_SCALE = "System-Train-DynamicLossScale-{graph}-LossScale"
GOOD_STEPS = "System-Train-DynamicLossScale-{graph}-GoodStepCounter"


def box_capacity(dataset):
    """Boxes per image a graph step needs for ``dataset``: the most any of its images has (at least 1). Exact for the
    SSD training augmentation, which only ever drops boxes (crop) or keeps them (zoom-out, flip)."""
    return dataset.max_boxes()


class EngineScheduleLR(LRScheduler):
    """:func:`cv.detection.engine.trainer.learning_rate` as a scheduler that ``nn.Graph`` evaluates itself.

    The eager schedule is ``base_lr * gamma ** (lr steps reached) * warm-up factor``, a product that OneFlow 0.9's
    graph schedulers cannot express directly (LambdaLR and ChainedScheduler have no graph form, and WarmupLR over
    MultiStepLR interpolates across an lr step that falls inside the warm-up instead of applying it). It is expressed
    exactly as a SequentialLR of LinearLRs: between consecutive lr steps ``k`` and ``k + 1`` (``step_iterations``,
    the global iterations where each lr step's epoch begins), a LinearLR from ``gamma**k * warmup_factor`` to
    ``gamma**k`` over the first ``warmup_iters`` iterations (constant at ``gamma**k`` after them). The graph
    evaluates it at its step counter, which :class:`GraphTrainer` keeps equal to the global iteration.
    """

    def __init__(self, optimizer, warmup_iters, step_iterations, warmup_factor=0.001, gamma=0.1):
        self.warmup_iters = int(warmup_iters)
        self.step_iterations = sorted(int(s) for s in step_iterations)
        self.warmup_factor = warmup_factor
        self.gamma = gamma
        super().__init__(optimizer)

    def segments(self):
        """``[(start_factor, end_factor, total_iters)]``, one LinearLR per stretch between lr steps."""
        return [(self.gamma ** k * self.warmup_factor, self.gamma ** k, self.warmup_iters)
                for k in range(len(self.step_iterations) + 1)]

    def get_lr(self, base_lr, step):
        # What OneFlow's learning_rate_schedule kernel computes from the configuration below (SequentialScheduler
        # and LinearLearningRate in oneflow/core/kernel/learning_rate_schedule_kernel.cpp).
        start, end, total = self.segments()[sum(step >= s for s in self.step_iterations)]
        return base_lr * (start + (end - start) * step / total if step < total else end)

    def _generate_conf_for_graph(self, lr_conf):
        lr_conf.sequential_scheduler_conf.SetInParent()
        conf = lr_conf.sequential_scheduler_conf
        for start, end, total in self.segments():
            linear = conf.schedulers.add().linear_lr_conf
            linear.SetInParent()
            linear.start_factor, linear.end_factor, linear.total_iters = start, end, total
        for milestone in self.step_iterations:
            conf.milestones.append(milestone)
            conf.interval_rescaling.append(False)  # every stretch sees the global step, as the warm-up needs


def lr_step_iterations(lr_steps, state, iters_per_epoch):
    """The global iterations at which the epochs of ``lr_steps`` begin, for a run that continues from ``state``
    (``iteration``, ``epoch`` done, ``part`` of the next one done) with ``iters_per_epoch`` iterations per epoch.
    Steps already reached map to iterations at or before ``state["iteration"]``."""
    next_epoch_start = state["iteration"] - (state.get("part") or 0)  # where the epoch in progress began
    first = state["epoch"] + 1
    return [next_epoch_start + (step - first) * iters_per_epoch for step in lr_steps]


class TrainingLosses(nn.Module):
    """The part of the model a training step runs, on padded, fixed-size input, as OneFlow's graph compiles it.

    ``forward(images [N, 3, H, W] in 0-1 at the model's size, gt_boxes [N, G, 4], gt_labels [N, G],
    valid [N, G])`` returns each process's ``(box loss, classification loss)``, ``[world]`` each: the batch holds
    the processes' images in rank order (``sbp.split(0)``), and process ``r``'s losses are its images' sums divided
    by its own number of positives, exactly what :meth:`SSD.compute_loss` gives on that process in eager mode.
    """

    def __init__(self, model, world_size):
        super().__init__()
        self.model = model
        self.world_size = world_size
        # Constants as non-persistent buffers, so that they follow the module to global tensors; the model's state
        # dict is left as it is.
        anchors = _default_boxes(model)
        self.register_buffer("anchors", anchors, persistent=False)
        for name, values in (("mean", model.image_mean), ("std", model.image_std)):
            self.register_buffer(name, flow.tensor(values, device=anchors.device).view(1, 3, 1, 1), persistent=False)

    def forward(self, images, gt_boxes, gt_labels, valid):
        x = (images - self.mean) / self.std
        features = self.model.backbone(x)
        if isinstance(features, dict):
            features = list(features.values())
        box, cls, positives = self.model.per_image_losses(self.model.head(features), self.anchors, gt_boxes,
                                                          gt_labels, valid)
        per_process = lambda v: v.reshape(self.world_size, -1).sum(dim=1)  # noqa: E731  [world]
        positives = per_process(positives).clamp(min=1)
        return per_process(box) / positives, per_process(cls) / positives


def _default_boxes(model):
    """The default boxes of ``model`` at its input size, on its device (an eager forward finds the map sizes)."""
    was_training = model.training
    model.eval()  # a dummy forward must not touch batch-norm statistics, were there any
    device = next(model.parameters()).device
    try:
        with flow.no_grad():
            features = model.backbone(flow.zeros(1, 3, *model.size, device=device))
    finally:
        model.train(was_training)
    if isinstance(features, dict):
        features = list(features.values())
    return model.anchor_generator([f.shape[-2:] for f in features], model.size, device).clone()


class TrainStepGraph(nn.Graph):
    """One SGD step as a graph: ``graph(images, gt_boxes, gt_labels, valid) -> (box [world], cls [world])``."""

    def __init__(self, losses, optimizer, scheduler, amp_scaler=None):
        super().__init__()
        self.losses = losses
        self.add_optimizer(optimizer, lr_sch=scheduler)
        if amp_scaler is not None:
            # float16 autocast and dynamic loss scaling inside the graph, with the eager DynamicLossScaler's policy.
            self.config.enable_amp(True)
            self.set_grad_scaler(flow.amp.GradScaler(init_scale=amp_scaler.scale, growth_factor=2.0,
                                                     backoff_factor=0.5,
                                                     growth_interval=amp_scaler.growth_interval))

    def build(self, images, gt_boxes, gt_labels, valid):
        box, cls = self.losses(images, gt_boxes, gt_labels, valid)
        # The mean over processes: DistributedDataParallel averages the processes' gradients.
        (box + cls).mean().backward()
        return box, cls


class GraphTrainer:
    """Trains ``model`` (eager, local) through a :class:`TrainStepGraph` on a global copy of it.

    Args:
        model: the eager model, already on ``device`` and with its resumed weights.
        optimizer: the eager SGD over ``model``'s trainable parameters, with its resumed state (momentum); its
            hyperparameters are the graph's.
        base_lr, warmup_iters, lr_steps: :func:`cv.detection.engine.trainer.learning_rate`'s arguments.
        state: the run's counters (``iteration``, ``epoch``, ``part``) at the start.
        iters_per_epoch: ``len`` of the training loader.
        amp_scaler: a :class:`cv.detection.engine.trainer.DynamicLossScaler` for ``--amp``, its state resumed: the graph
            then trains with OneFlow's AMP and dynamic loss scaling from that state. ``--amp`` is CUDA only (the
            training program refuses it on CPU); on CPU, OneFlow 0.9's AMP pass leaves the network in float32 and
            only the loss scaling acts, which is how the tests check it without a GPU.
        max_boxes: ground-truth boxes per image in a step: :func:`box_capacity` of the training set (what the
            training program passes), else :data:`MAX_BOXES`.

    Call it as ``trainer(images, targets, iteration)`` (lists as :func:`cv.detection.data.base.to_tensors` makes them):
    one step; returns this process's losses, as eager training computes them. :meth:`export` copies the weights,
    momentum and loss scale back into ``model``, ``optimizer`` and ``amp_scaler``.
    """

    def __init__(self, model, optimizer, base_lr, warmup_iters, lr_steps, state, iters_per_epoch, device,
                 amp_scaler=None, max_boxes=MAX_BOXES):
        device = device if isinstance(device, flow.device) else flow.device(device)
        self.model, self.optimizer, self.amp_scaler = model, optimizer, amp_scaler
        self.device, self.max_boxes = device, max_boxes
        self.world, self.rank = dist.world_size(), dist.rank()
        self.placement = flow.placement(device.type, ranks=list(range(self.world)))
        self.truncated = 0
        self.steps_done = 0

        # The graph's copy of the model: global, broadcast from rank 0 (every process holds it all).
        losses = TrainingLosses(copy.deepcopy(model), self.world)
        losses.train()
        losses.to_global(placement=self.placement, sbp=flow.sbp.broadcast)
        self.losses = losses
        names = {id(p): n for n, p in model.named_parameters()}
        global_params = dict(losses.model.named_parameters())
        if len(optimizer.param_groups) != 1:
            raise ValueError("graph mode supports an optimizer with one parameter group")
        group = optimizer.param_groups[0]
        self.param_names = [names[id(p)] for p in group.parameters]  # the eager optimizer's parameter order
        graph_optimizer = flow.optim.SGD([global_params[n] for n in self.param_names], lr=base_lr,
                                         momentum=group["momentum"], weight_decay=group["weight_decay"],
                                         dampening=group["dampening"], nesterov=group["nesterov"])
        scheduler = EngineScheduleLR(graph_optimizer, warmup_iters,
                                     lr_step_iterations(lr_steps, state, iters_per_epoch))
        self.scheduler = scheduler
        self.graph = TrainStepGraph(losses, graph_optimizer, scheduler, amp_scaler)
        self.graph.load_state_dict(self._initial_graph_state(state["iteration"]))
        self.train_step = None  # the graph's step counter, once it exists (after the first step)

    # --- state in and out ----------------------------------------------------------------------------------------

    def _global(self, tensor):
        return tensor.to(self.device).to_global(placement=self.placement, sbp=flow.sbp.broadcast)

    def _momentum_key(self, name):
        return MOMENTUM.format(block="losses", param=f"model.{name}")

    def _initial_graph_state(self, iteration):
        """The graph's own state to start from: step counter, resumed SGD momentum and loss scale."""
        state = {TRAIN_STEP: flow.tensor([iteration], dtype=flow.int64).to_global(
            placement=flow.placement("cpu", ranks=[0]), sbp=flow.sbp.broadcast)}
        saved = self.optimizer.state_dict()["state"]
        for index, name in enumerate(self.param_names):
            buf = saved.get(index, {}).get("momentum_buf")
            if buf is not None:  # no buffer yet (no eager step taken): the graph's zeros are the same thing
                state[self._momentum_key(name)] = self._global(buf)
        if self.amp_scaler is not None:
            cpu0 = flow.placement("cpu", ranks=[0])
            state[LOSS_SCALE.format(graph=self.graph.name)] = flow.tensor(
                [self.amp_scaler.scale], dtype=flow.float32).to_global(placement=cpu0, sbp=flow.sbp.broadcast)
            state[GOOD_STEPS.format(graph=self.graph.name)] = flow.tensor(
                [self.amp_scaler.good_steps], dtype=flow.int64).to_global(placement=cpu0, sbp=flow.sbp.broadcast)
        return state

    def export(self):
        """Copy the graph's weights, SGD momentum (and loss scale) into the eager model, optimizer (and scaler), in
        the eager optimizer's format: what evaluation, checkpoints and an eager continuation read. A collective:
        every process calls it. Reports (rank 0) the images whose boxes were truncated since the last export."""
        with flow.no_grad():
            local = self.model.state_dict(keep_vars=True)
            for name, tensor in self.losses.model.state_dict(keep_vars=True).items():
                local[name].copy_(tensor.to_local())  # broadcast: every process holds the whole tensor
        if self.graph.is_compiled:
            graph_state = self.graph.state_dict()
            saved = self.optimizer.state_dict()
            state = {"step": saved["state"].get("step", 0) + self.steps_done}
            for index, name in enumerate(self.param_names):
                state[index] = {"momentum_buf": graph_state[self._momentum_key(name)].to_local().clone()}
            self.optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
            self.steps_done = 0
            if self.amp_scaler is not None:
                scale = graph_state.get(LOSS_SCALE.format(graph=self.graph.name))
                good = graph_state.get(GOOD_STEPS.format(graph=self.graph.name))
                if scale is not None and scale.to_local().numel():  # OneFlow keeps them on rank 0
                    self.amp_scaler.scale = float(scale.to_local())
                    self.amp_scaler.good_steps = int(good.to_local())
        truncated = sum(counts[0] for counts in dist.all_gather_ints([self.truncated]))
        if truncated:
            dist.print0(f"graph mode: {truncated} training image(s) had more than {self.max_boxes} boxes; each kept "
                        f"its first {self.max_boxes} (graph_mode.MAX_BOXES)")
        self.truncated = 0

    # --- a step --------------------------------------------------------------------------------------------------

    def batch(self, images, targets):
        """``(images, gt_boxes, gt_labels, valid)``: this process's part of the step's input, on its device,
        targets checked as in eager training and padded to ``max_boxes`` per image."""
        model = self.model
        sizes = [tuple(img.shape[-2:]) for img in images]
        for i, size in enumerate(sizes):
            if size != tuple(model.size):
                raise ValueError(f"graph mode needs every training image at the model's input size {model.size} "
                                 f"(the training transform's output); image {i} is {size}")
        model.check_targets(targets, sizes)
        kept = []
        for t in targets:
            if t["boxes"].shape[0] > self.max_boxes:
                self.truncated += 1
                t = {"boxes": t["boxes"][: self.max_boxes], "labels": t["labels"][: self.max_boxes]}
            kept.append(t)
        gt_boxes, gt_labels, valid = model.scaled_targets(kept, sizes, self.device, num_gt=self.max_boxes)
        return flow.stack(list(images)).to(self.device), gt_boxes, gt_labels, valid

    def __call__(self, images, targets, iteration):
        inputs = [x.to_global(placement=self.placement, sbp=flow.sbp.split(0)) for x in self.batch(images, targets)]
        self._align_train_step(iteration)
        box, cls = self.graph(*inputs)
        if self.train_step is None:
            self.train_step = self.graph.state_dict()[TRAIN_STEP]
        self.steps_done += 1
        box, cls = (v.to_global(sbp=flow.sbp.broadcast).to_local()[self.rank] for v in (box, cls))
        return {"bbox_regression": box, "classification": cls}

    def _align_train_step(self, iteration):
        """Set the graph's step counter (the learning rate's argument) to the global ``iteration`` if it is not.

        It always is, except under ``--amp``: OneFlow does not advance it on a step skipped for non-finite
        gradients, while the eager schedule counts every iteration (also skipped ones)."""
        if self.train_step is None:
            return
        counter = self.train_step.to_local()  # OneFlow keeps it on rank 0; empty elsewhere
        if counter.numel() and int(counter) != iteration:
            counter.fill_(iteration)
            # Wait for the write: OneFlow does not order this eager write before the graph's next read of it.
            assert int(counter) == iteration

    def learning_rate(self, iteration):
        """The learning rate the graph uses at ``iteration`` (what its scheduler computes)."""
        return self.scheduler.get_lr(self.scheduler.base_lrs[0], iteration)

