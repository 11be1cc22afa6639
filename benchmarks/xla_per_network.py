"""XLA per network instead of per step: each network's forward and backward pass, compiled or not.

Issue 13 asks whether XLA pays when it compiles each network on its own rather than the whole training step
(which train_throughput.py measured 1.4-2x slower with XLA on this CPU). This script times, for the encoder, the
generator and the critic of the default model, one forward pass plus the gradient of its output with respect to
its weights, at the training batch, in a tf.function with and without `jit_compile`, and the critic's
gradient-penalty pass (the gradient of the input-gradient norm, a double backward pass), which dominates a step.

    python benchmarks/xla_per_network.py                 # 64 px, width 32, batch 16
    python benchmarks/xla_per_network.py --size 64 --width 32 --repeats 30
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def passes(model, batch, size, latent_dim, channels):
    """{name: (function, its inputs)}: the forward-and-backward passes a training step runs."""
    import tensorflow as tf

    images = tf.random.uniform([batch, size, size, channels], -1, 1)
    z = tf.random.normal([batch, latent_dim])

    def through(network, inputs):
        def forward_backward(inputs):
            with tf.GradientTape() as tape:
                outputs = network(inputs, training=True)
                loss = tf.add_n([tf.reduce_mean(o) for o in tf.nest.flatten(outputs)])
            return tape.gradient(loss, network.trainable_variables)
        return forward_backward, inputs

    def penalty(inputs):  # the model's own penalty (interpolation included), differentiated for the critic update
        with tf.GradientTape() as tape:
            loss = model._gradient_penalty(*inputs, 0, 0, batch)
        return tape.gradient(loss, model.critic.trainable_variables)

    return {
        "encoder": through(model.encoder, images),
        "generator": through(model.generator, z),
        "critic": through(model.critic, [images, z]),
        "critic, gradient penalty": (penalty, [images, model.encoder(images), model.generator(z), z]),
    }


def time_ms(function, inputs, repeats):
    function(inputs)  # trace (and compile)
    started = time.perf_counter()
    for _ in range(repeats):
        function(inputs)
    return 1000 * (time.perf_counter() - started) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import tensorflow as tf

    from ganspection_tf.training import TrainConfig, build_model

    tf.get_logger().setLevel("ERROR")  # each pass is traced once per wrapper; the retracing warning counts wrappers
    config = TrainConfig.from_flat(data=".", image_size=args.size, width=args.width, channels=3)
    model = build_model(config)
    print(f"{args.size} px, width {args.width}, batch {args.batch}; ms per forward + backward pass, "
          f"mean of {args.repeats}\n")
    print("| pass | graph ms | XLA ms | XLA / graph |")
    print("|---|---|---|---|")
    for name, (function, inputs) in passes(model, args.batch, args.size, config.model.latent_dim, 3).items():
        graph = time_ms(tf.function(function), inputs, args.repeats)
        xla = time_ms(tf.function(function, jit_compile=True), inputs, args.repeats)
        print(f"| {name} | {graph:.1f} | {xla:.1f} | {xla / graph:.2f} |")


if __name__ == "__main__":
    main()
