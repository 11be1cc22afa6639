"""The Wasserstein BiGAN as one Keras model with a custom ``train_step``.

Per step (read top to bottom in ``train_step``):

1. ``critic_steps`` critic updates: the critic D(x, z) learns to tell real pairs (x, E(x)) from fake pairs
   (G(z), z), z ~ N(0, I), with the WGAN-GP gradient penalty on interpolated joint pairs (on every
   ``gp_every``-th critic update only, k times weighted: lazy regularisation, Karras et al. 2020).
2. one encoder + generator update: the Wasserstein loss, plus λ_latent·(1/d)‖z − E(G(z))‖² (our latent L2
   loss), plus optional λ_rec·‖x − G(E(x))‖₁ and critic feature matching (Salimans et al. 2016).
3. the exponential moving average of E and G weights (Salimans et al. 2016) used for scoring and sampling.

Noise is drawn from a stateless RNG keyed by (seed, step, draw): every replica draws the *global* batch of noise
and keeps its own slice, so replicas never share noise and a distributed step equals a single-device step at the
same global batch.
"""

import keras
import tensorflow as tf
from keras import ops

from ganspection_tf import distribute
from ganspection_tf.config import MAX_CRITIC_STEPS, ModelConfig
from ganspection_tf.models import networks

NOISE_DRAWS_PER_STEP = 2 * MAX_CRITIC_STEPS + 2  # two draws per critic update, one for E/G, one spare
EMA_ENCODER, EMA_GENERATOR = "ema_encoder", "ema_generator"  # the averaged networks' layer names
GRADIENT_NORM_EPSILON = 1e-12  # keeps sqrt differentiable at 0 (NaN otherwise)


def _critic_draw(update):
    """The first noise draw of critic update `update` (its z; the next draw is its penalty's ε)."""
    return 2 * update


def _mean_feature_abs_gap(a, b):
    return ops.mean(ops.abs(ops.mean(a, axis=0) - ops.mean(b, axis=0)))


@keras.saving.register_keras_serializable(package="ganspection_tf")
class WassersteinBiGAN(keras.Model):
    """Encoder, generator and joint critic trained adversarially with WGAN-GP and the latent L2 loss."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        if config.channels is None:
            raise ValueError("ModelConfig.channels must be decided (1 or 3) before the model is built")
        self.config = config
        shape = self._network_shape()
        self.encoder = networks.build_encoder(**shape, norm=config.norm)
        self.generator = networks.build_generator(**shape, norm=config.norm)
        self.critic = networks.build_critic(**shape, norm=config.critic_norm, minibatch_stats=config.minibatch_stats)
        self.ema_weights = self._create_ema_weights()
        # Completed steps, counted by the model itself (not an optimizer's iterations, which a loss-scaling
        # optimizer leaves unchanged on a skipped step); saved in model.keras and in the checkpoints.
        self.step_counter = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                            aggregation="only_first_replica", name="step")
        self._step_from_optimizer = False  # True for a model.keras saved before the model had its own counter

        names = ["critic_loss", "wasserstein", "gradient_penalty", "generator_loss", "latent_loss", "rec_loss"]
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True

    # ---------------------------------------------------------------- configuration and serialization

    @property
    def image_size(self):
        return self.config.image_size

    @property
    def inspected_size(self):
        """The side the whole image is inspected at, by tiles of image_size (``tiles.py``)."""
        return self.config.inspected_size

    @property
    def channels(self):
        return self.config.channels

    @property
    def latent_dim(self):
        return self.config.latent_dim

    def _network_shape(self):
        config = self.config
        return dict(image_size=config.image_size, channels=config.channels, latent_dim=config.latent_dim,
                    width=config.width)

    def get_config(self):
        # The model config itself (Keras would record the constructor's defaults for a subclassed model).
        return {"name": self.name, **self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        name = config.pop("name", None)
        return cls(ModelConfig.from_dict(config, source="model.keras", prefix="config."), name=name)

    def load_own_variables(self, store):
        """Loads the averaged weights and the step; a model.keras from before the step counter has no step."""
        variables = self._trainable_variables + self._non_trainable_variables
        if len(store.keys()) == len(variables) - 1:
            for index, variable in enumerate(v for v in variables if v is not self.step_counter):
                variable.assign(store[str(index)])
            self._step_from_optimizer = True
            return
        super().load_own_variables(store)

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        """Takes the critic's and the encoder+generator's optimizers; builds both now.

        Building here, inside the strategy scope, creates their slot variables as mirrored variables
        (lazily built optimizers fail under MirroredStrategy) and lets checkpoints restore into them.
        """
        super().compile(optimizer=None, **kwargs)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.d_optimizer.build(self.critic.trainable_variables)
        self.g_optimizer.build(self._generator_side_variables())

    def get_compile_config(self):
        return {
            "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
            "g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer),
            "jit_compile": bool(self.jit_compile),
        }

    def compile_from_config(self, config):
        self.compile(
            d_optimizer=keras.saving.deserialize_keras_object(config["d_optimizer"]),
            g_optimizer=keras.saving.deserialize_keras_object(config["g_optimizer"]),
            jit_compile=config.get("jit_compile", False),
        )

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    @property
    def step(self):
        """Completed training steps (one step = critic_steps critic updates + one E/G update)."""
        return self.g_optimizer.iterations if self._step_from_optimizer else self.step_counter

    def call(self, images, training=False):
        """Reconstruction G(E(x)) of images in [-1, 1]."""
        return self.generator(self.encoder(images, training=training), training=training)

    def fit(self, *args, shuffle=False, **kwargs):
        """Keras' fit, trained from tf.data datasets that shuffle themselves: Keras' default shuffle=True would
        only warn that it ignores it for a dataset."""
        return super().fit(*args, shuffle=shuffle, **kwargs)

    # ---------------------------------------------------------------- training

    def train_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        real = ops.cast(real, "float32")
        batch = ops.shape(real)[0]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        step = self.step_counter.value

        # E and G are fixed during the critic updates: encode once, generate every update's fakes in one call.
        real_z = self.encoder(real, training=True)
        updates = range(self.config.critic_steps)
        zs = [self._replica_noise(step, _critic_draw(update), batch, [self.latent_dim]) for update in updates]
        fakes = ops.split(self.generator(ops.concatenate(zs, axis=0), training=True), len(zs), axis=0)
        # The logged penalty is that of the step's last penalised update; a step without one adds nothing to its
        # mean (the 0 of an unpenalised update is no measurement).
        penalty, penalised_in_step = 0.0, False
        for update, z, fake in zip(updates, zs, fakes):
            critic_logs, penalised = self._critic_update(real, real_z, z, fake, step, update, batch, replicas)
            penalty = ops.where(penalised, critic_logs["gradient_penalty"], penalty)
            penalised_in_step = ops.logical_or(penalised_in_step, penalised)
        critic_logs["gradient_penalty"] = penalty
        generator_logs = self._encoder_generator_update(real, batch, step, 2 * self.config.critic_steps, replicas)
        self._update_moving_averages(step)
        self.step_counter.assign_add(1)

        weights = {"gradient_penalty": ops.cast(penalised_in_step, "float32")}
        for name, value in {**critic_logs, **generator_logs}.items():
            self.loss_trackers[name].update_state(value, sample_weight=weights.get(name))
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        return distribute.reducible_logs(logs)  # a workaround for multi-worker fit, see there

    def _critic_update(self, real, real_z, z, fake, step, update, batch, replicas):
        """Critic update number `update` of this step: (its logs, whether it carried the gradient penalty)."""
        penalised = self._penalised(step, update)
        with tf.GradientTape() as tape:
            real_value, _ = self.critic([real, real_z], training=True)
            fake_value, _ = self.critic([fake, z], training=True)
            wasserstein = ops.mean(real_value) - ops.mean(fake_value)
            penalty = self._lazy_gradient_penalty(penalised, real, real_z, fake, z, step, _critic_draw(update) + 1,
                                                  batch)
            # The drift term (Karras et al. 2018) keeps the critic's values near 0 so they cannot run away.
            drift = ops.mean(ops.square(real_value))
            # On 1 update in gp_every, gp_every times the weight: the same penalty on average.
            gp_weight = self.config.gp_weight * self.config.gp_every
            loss = -wasserstein + gp_weight * penalty + self.config.drift_weight * drift
            # Gradients of the replicas are summed: scale so the sum is the gradient of the global mean; under
            # mixed_float16 also multiply by the loss scale that the LossScaleOptimizer divides out.
            scaled = self.d_optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.critic.trainable_variables)
        self.d_optimizer.apply_gradients(zip(grads, self.critic.trainable_variables))
        return {"critic_loss": loss, "wasserstein": wasserstein, "gradient_penalty": penalty}, penalised

    def _penalised(self, step, update):
        """Whether critic update `update` of `step` carries the gradient penalty: every gp_every-th critic update
        counted over the run, the first one included. A Python bool when it is the same in every step (gp_every
        divides critic_steps, 1 included): that graph has no condition."""
        every, updates = self.config.gp_every, self.config.critic_steps
        if updates % every == 0:
            return update % every == 0
        return ops.equal((ops.cast(step, "int64") * updates + update) % every, 0)

    def _lazy_gradient_penalty(self, penalised, *args):
        """The gradient penalty when `penalised`, else 0 without computing it (a tf.cond when it is a tensor: one
        graph for every step)."""
        if penalised is True:
            return self._gradient_penalty(*args)
        if penalised is False:
            return tf.constant(0.0)
        return tf.cond(penalised, lambda: self._gradient_penalty(*args), lambda: tf.constant(0.0))

    def _gradient_penalty(self, real, real_z, fake, z, step, draw, batch):
        """(‖∇D(x̂, ẑ)‖ − 1)² on joint pairs interpolated between (x, E(x)) and (G(z), z), ε ~ U[0, 1]."""
        eps = self._replica_noise(step, draw, batch, [1], uniform=True)
        mixed_z = real_z + eps * (z - real_z)
        mixed_image = real + ops.reshape(eps, [-1, 1, 1, 1]) * (fake - real)
        with tf.GradientTape() as tape:
            tape.watch([mixed_image, mixed_z])
            value, _ = self.critic([mixed_image, mixed_z], training=True)
        grad_image, grad_z = tape.gradient(value, [mixed_image, mixed_z])
        squared = ops.sum(ops.square(grad_image), axis=[1, 2, 3]) + ops.sum(ops.square(grad_z), axis=1)
        norm = ops.sqrt(squared + GRADIENT_NORM_EPSILON)
        return ops.mean(ops.square(norm - 1.0))

    def _encoder_generator_update(self, real, batch, step, draw, replicas):
        z = self._replica_noise(step, draw, batch, [self.latent_dim])
        variables = self._generator_side_variables()
        with tf.GradientTape() as tape:
            real_z = self.encoder(real, training=True)
            fake = self.generator(z, training=True)
            real_value, real_features = self.critic([real, real_z], training=True)
            fake_value, fake_features = self.critic([fake, z], training=True)
            # E wants D to take (x, E(x)) for fake, G wants D to take (G(z), z) for real.
            adversarial = ops.mean(real_value) - ops.mean(fake_value)
            latent = ops.mean(ops.square(z - self.encoder(fake, training=True)))
            loss = adversarial + self.config.latent_weight * latent
            rec = ops.mean(ops.abs(real - self.generator(real_z, training=True)))
            if self.config.rec_weight:
                loss = loss + self.config.rec_weight * rec
            if self.config.fm_weight:
                loss = loss + self.config.fm_weight * _mean_feature_abs_gap(real_features, fake_features)
            scaled = self.g_optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, variables)
        self.g_optimizer.apply_gradients(zip(grads, variables))
        return {"generator_loss": loss, "latent_loss": latent, "rec_loss": rec}

    def _generator_side_variables(self):
        return self.encoder.trainable_variables + self.generator.trainable_variables

    def _replica_noise(self, step, draw, batch, dims, uniform=False):
        """This replica's slice of the global batch of noise for (seed, step, draw)."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context else 1
        replica = context.replica_id_in_sync_group if context else 0
        seed = tf.stack(
            [tf.constant(self.config.seed, tf.int64), ops.cast(step, "int64") * NOISE_DRAWS_PER_STEP + draw]
        )
        shape = [batch * replicas] + dims
        sample = tf.random.stateless_uniform(shape, seed) if uniform else tf.random.stateless_normal(shape, seed)
        start = ops.cast(replica, "int32") * batch
        return sample[start : start + batch]

    # ---------------------------------------------------------------- weight averaging

    def _create_ema_weights(self):
        # ONLY_FIRST_REPLICA aggregation lets each replica assign in replica context (values are identical).
        averages = []
        for var in self._generator_side_variables():
            average = self.add_weight(
                shape=var.shape,
                initializer=keras.initializers.Zeros(),
                trainable=False,
                aggregation="only_first_replica",
                name=f"ema_{var.path.replace('/', '_')}",
            )
            average.assign(var)
            averages.append(average)
        return averages

    def _update_moving_averages(self, step):
        if not self.config.ema_decay:
            return
        # Warm-up (as tf.train.ExponentialMovingAverage with num_updates): early averages follow the weights.
        steps = ops.cast(step, "float32")
        decay = ops.minimum(self.config.ema_decay, (1.0 + steps) / (10.0 + steps))
        for average, var in zip(self.ema_weights, self._generator_side_variables()):
            average.assign(decay * average + (1.0 - decay) * var)

    def scoring_networks(self, subpixel=False):
        """(encoder, generator, critic) for scoring and sampling: E and G carry the averaged weights. `subpixel`:
        G's upsampling in the form LiteRT runs fastest (``networks.SubpixelConv2DTranspose``: the same outputs;
        slower under TensorFlow), a copy of the weights as they are now, for the export."""
        averaged = bool(self.config.ema_decay)
        if not (averaged or subpixel):
            return self.encoder, self.generator, self.critic
        shape = self._network_shape()
        generator = networks.build_generator(**shape, norm=self.config.norm, subpixel=subpixel,
                                             name=EMA_GENERATOR if averaged else self.generator.name)
        if not averaged:
            generator.set_weights(self.generator.get_weights())
            return self.encoder, generator, self.critic
        encoder = networks.build_encoder(**shape, norm=self.config.norm, name=EMA_ENCODER)
        self.copy_averages_into(encoder, generator)
        return encoder, generator, self.critic

    def copy_averages_into(self, encoder, generator):
        """Sets the averaged weights as they are now into an encoder and generator of `scoring_networks` (which
        hold a copy: they do not follow training by themselves)."""
        for target, average in zip(encoder.trainable_variables + generator.trainable_variables, self.ema_weights):
            target.assign(average)
