"""Fashion-MNIST class labels, shared by training, serving and clients (no TensorFlow import)."""

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
MODEL_NAME = "fashion_mnist"
IMAGE_SIZE = 28
