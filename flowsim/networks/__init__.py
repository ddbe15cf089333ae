"""Network families (section 2 of science.md): linear tensor networks (Yun, Krishnan & Mobahi, ICLR 2021)."""

from ._base import AbstractLinearTensorNetwork as AbstractLinearTensorNetwork
from ._base import AbstractOrthogonallyDecomposableNetwork as AbstractOrthogonallyDecomposableNetwork
from ._convolutional import Convolutional as Convolutional
from ._diagonal import Diagonal as Diagonal
from ._fully_connected import FullyConnected as FullyConnected
from ._linear import Linear as Linear
from ._tensor import TensorNetwork as TensorNetwork
