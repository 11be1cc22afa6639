"""The Wasserstein BiGAN as one Keras model with a custom ``train_step``.

Per step (read top to bottom in ``train_step``):

1. ``critic_steps`` critic updates: the critic D(x, z) learns to tell real pairs (x, E(x)) from fake pairs
   (G(z), z), z ~ N(0, I), with the WGAN-GP gradient penalty on interpolated joint pairs.
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
from ganspection_tf.models import networks

NOISE_DRAWS_PER_STEP = 32  # room for critic_steps ≤ 15 (two draws each) plus the generator's draw
GRADIENT_NORM_EPSILON = 1e-12  # keeps sqrt differentiable at 0 (NaN otherwise)


def _mean_feature_abs_gap(a, b):
    return ops.mean(ops.abs(ops.mean(a, axis=0) - ops.mean(b, axis=0)))


@keras.saving.register_keras_serializable(package="ganspection_tf")
class WassersteinBiGAN(keras.Model):
    """Encoder, generator and joint critic trained adversarially with WGAN-GP and the latent L2 loss."""

    def __init__(
        self,
        image_size=64,
        channels=3,
        latent_dim=64,
        width=32,
        norm="layer",
        critic_norm="layer",
        minibatch_stats=False,
        critic_steps=5,
        gp_weight=10.0,
        latent_weight=1.0,
        rec_weight=0.0,
        fm_weight=0.0,
        drift_weight=1e-3,
        ema_decay=0.999,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if critic_steps < 1 or 2 * critic_steps + 1 > NOISE_DRAWS_PER_STEP:
            raise ValueError(f"critic_steps must be in 1..{(NOISE_DRAWS_PER_STEP - 1) // 2}, got {critic_steps}")
        self.image_size, self.channels, self.latent_dim, self.width = image_size, channels, latent_dim, width
        self.norm, self.critic_norm, self.minibatch_stats = norm, critic_norm, minibatch_stats
        self.critic_steps, self.gp_weight, self.latent_weight = critic_steps, gp_weight, latent_weight
        self.rec_weight, self.fm_weight, self.drift_weight = rec_weight, fm_weight, drift_weight
        self.ema_decay, self.seed = ema_decay, seed

        shape = dict(image_size=image_size, channels=channels, latent_dim=latent_dim, width=width)
        self.encoder = networks.build_encoder(**shape, norm=norm)
        self.generator = networks.build_generator(**shape, norm=norm)
        self.critic = networks.build_critic(**shape, norm=critic_norm, minibatch_stats=minibatch_stats)
        self.ema_weights = self._create_ema_weights()

        names = ["critic_loss", "wasserstein", "gradient_penalty", "generator_loss", "latent_loss", "rec_loss"]
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True

    # ---------------------------------------------------------------- configuration and serialization

    def get_config(self):
        # Written by hand: Keras records constructor defaults, not the values, for subclassed models.
        return {
            "name": self.name,
            "image_size": self.image_size,
            "channels": self.channels,
            "latent_dim": self.latent_dim,
            "width": self.width,
            "norm": self.norm,
            "critic_norm": self.critic_norm,
            "minibatch_stats": self.minibatch_stats,
            "critic_steps": self.critic_steps,
            "gp_weight": self.gp_weight,
            "latent_weight": self.latent_weight,
            "rec_weight": self.rec_weight,
            "fm_weight": self.fm_weight,
            "drift_weight": self.drift_weight,
            "ema_decay": self.ema_decay,
            "seed": self.seed,
        }

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
        return self.g_optimizer.iterations

    def call(self, images, training=False):
        """Reconstruction G(E(x)) of images in [-1, 1]."""
        return self.generator(self.encoder(images, training=training), training=training)

    # ---------------------------------------------------------------- training

    def train_step(self, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        real = ops.cast(real, "float32")
        batch = ops.shape(real)[0]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        step = self.g_optimizer.iterations

        # E and G are fixed during the critic updates: encode once, generate every update's fakes in one call.
        real_z = self.encoder(real, training=True)
        draws = [2 * i for i in range(self.critic_steps)]
        zs = [self._replica_noise(step, draw, batch, [self.latent_dim]) for draw in draws]
        fakes = ops.split(self.generator(ops.concatenate(zs, axis=0), training=True), self.critic_steps, axis=0)
        for draw, z, fake in zip(draws, zs, fakes):
            critic_logs = self._critic_update(real, real_z, z, fake, step, draw, batch, replicas)
        generator_logs = self._encoder_generator_update(real, batch, step, 2 * self.critic_steps, replicas)
        self._update_moving_averages(step)

        for name, value in {**critic_logs, **generator_logs}.items():
            self.loss_trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        return distribute.reducible_logs(logs)  # a workaround for multi-worker fit, see there

    def _critic_update(self, real, real_z, z, fake, step, draw, batch, replicas):
        with tf.GradientTape() as tape:
            real_value, _ = self.critic([real, real_z], training=True)
            fake_value, _ = self.critic([fake, z], training=True)
            wasserstein = ops.mean(real_value) - ops.mean(fake_value)
            penalty = self._gradient_penalty(real, real_z, fake, z, step, draw + 1, batch)
            # The drift term (Karras et al. 2018) keeps the critic's values near 0 so they cannot run away.
            drift = ops.mean(ops.square(real_value))
            loss = -wasserstein + self.gp_weight * penalty + self.drift_weight * drift
            # Gradients of the replicas are summed: scale so the sum is the gradient of the global mean; under
            # mixed_float16 also multiply by the loss scale that the LossScaleOptimizer divides out.
            scaled = self.d_optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.critic.trainable_variables)
        self.d_optimizer.apply_gradients(zip(grads, self.critic.trainable_variables))
        return {"critic_loss": loss, "wasserstein": wasserstein, "gradient_penalty": penalty}

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
            loss = adversarial + self.latent_weight * latent
            rec = ops.mean(ops.abs(real - self.generator(real_z, training=True)))
            if self.rec_weight:
                loss = loss + self.rec_weight * rec
            if self.fm_weight:
                loss = loss + self.fm_weight * _mean_feature_abs_gap(real_features, fake_features)
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
        seed = tf.stack([tf.constant(self.seed, tf.int64), ops.cast(step, "int64") * NOISE_DRAWS_PER_STEP + draw])
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
        if not self.ema_decay:
            return
        # Warm-up (as tf.train.ExponentialMovingAverage with num_updates): early averages follow the weights.
        steps = ops.cast(step, "float32")
        decay = ops.minimum(self.ema_decay, (1.0 + steps) / (10.0 + steps))
        for average, var in zip(self.ema_weights, self._generator_side_variables()):
            average.assign(decay * average + (1.0 - decay) * var)

    def scoring_networks(self):
        """(encoder, generator, critic) for scoring and sampling: E and G carry the averaged weights."""
        if not self.ema_decay:
            return self.encoder, self.generator, self.critic
        shape = dict(
            image_size=self.image_size, channels=self.channels, latent_dim=self.latent_dim, width=self.width
        )
        encoder = networks.build_encoder(**shape, norm=self.norm, name="ema_encoder")
        generator = networks.build_generator(**shape, norm=self.norm, name="ema_generator")
        targets = encoder.trainable_variables + generator.trainable_variables
        for target, average in zip(targets, self.ema_weights):
            target.assign(average)
        return encoder, generator, self.critic
